//! The soak's fleet of consumer instances, supervised as Kubernetes would run them.

use std::collections::HashMap;

use super::verdict::ChaosLog;
use super::{ChaosPlan, Rng};
use crate::process::ServiceProcess;
use crate::stack::TestStack;

const SERVICES: [&str; 3] = ["payment-processor", "analytics", "notifier"];

/// One consumer instance of the fleet and how many times it has been started.
struct Member {
    service: &'static str,
    transactional_id: String,
    generation: usize,
    process: ServiceProcess,
}

/// Every consumer instance, as a supervisor (Kubernetes) would run them: an instance that
/// exits, killed or not, is started again with the same transactional id.
pub(super) struct Fleet {
    members: Vec<Member>,
    envs: HashMap<&'static str, Vec<(String, String)>>,
    groups: HashMap<&'static str, String>,
    pub(super) log: ChaosLog,
}

impl Fleet {
    pub(super) fn start(
        stack: &TestStack,
        plan: &ChaosPlan,
        smtp_port: u16,
    ) -> anyhow::Result<Self> {
        let quiet = |mut env: Vec<(String, String)>| {
            // Per-record info lines from a dozen debug-build processes would cost the run
            // more CPU than the work itself.
            env.push(("RUST_LOG".into(), "warn".into()));
            env
        };
        let groups = HashMap::from([
            ("payment-processor", stack.group_id.clone()),
            ("analytics", stack.analytics_group()),
            ("notifier", stack.notifier_group()),
        ]);
        let envs = HashMap::from([
            ("payment-processor", quiet(stack.processor_env())),
            (
                "analytics",
                quiet(stack.consumer_env(&groups["analytics"], "")),
            ),
            ("notifier", quiet(stack.notifier_env(smtp_port, ""))),
        ]);
        let mut fleet = Self {
            members: Vec::new(),
            envs,
            groups,
            log: ChaosLog::default(),
        };
        let counts = [
            plan.partitions as usize,
            plan.analytics_instances,
            plan.notifier_instances,
        ];
        for (service, count) in SERVICES.into_iter().zip(counts) {
            for i in 0..count {
                let transactional_id = format!("{}-{i}", fleet.groups[service]);
                let process = fleet.spawn(service, &transactional_id, 0)?;
                fleet.members.push(Member {
                    service,
                    transactional_id,
                    generation: 0,
                    process,
                });
            }
        }
        Ok(fleet)
    }

    fn spawn(
        &self,
        service: &'static str,
        transactional_id: &str,
        generation: usize,
    ) -> anyhow::Result<ServiceProcess> {
        ServiceProcess::spawn_binary(
            service,
            self.envs[service].clone(),
            &self.groups[service],
            transactional_id,
            &format!("{transactional_id}-run{generation}"),
        )
    }

    /// SIGKILLs an instance and starts its successor at once: a service at random, then one of
    /// its instances, so each service is killed as often however many instances it runs.
    pub(super) async fn kill_random(&mut self, rng: &mut Rng) -> anyhow::Result<()> {
        let service = SERVICES[rng.between(0, SERVICES.len() as u64) as usize];
        let candidates: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].service == service)
            .collect();
        let index = candidates[rng.between(0, candidates.len() as u64) as usize];
        self.kill_and_restart(index).await
    }

    /// SIGKILLs member `index` and starts its successor at once.
    async fn kill_and_restart(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &mut self.members[index];
        member.process.kill().await?;
        *self.log.kills.entry(member.service).or_default() += 1;
        self.restart(index)
    }

    fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let (service, id, generation) = {
            let m = &self.members[index];
            (m.service, m.transactional_id.clone(), m.generation + 1)
        };
        let process = self.spawn(service, &id, generation)?;
        let m = &mut self.members[index];
        m.process = process;
        m.generation = generation;
        Ok(())
    }

    /// Restarts every member that exited on its own.
    pub(super) fn reap(&mut self) -> anyhow::Result<()> {
        for index in 0..self.members.len() {
            if self.members[index].process.exited()?.is_some() {
                let service = self.members[index].service;
                *self.log.unplanned_exits.entry(service).or_default() += 1;
                self.restart(index)?;
            }
        }
        Ok(())
    }
}
