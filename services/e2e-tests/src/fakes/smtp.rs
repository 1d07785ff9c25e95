//! [`SmtpSink`]: the mail server the notifier sends to.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use paystream_core::shutdown::Shutdown;

/// One message the [`SmtpSink`] received.
#[derive(Debug, Clone)]
pub struct SmtpMessage {
    pub recipients: Vec<String>,
    pub message_id: String,
    pub subject: String,
    pub data: String,
}

/// What the sink answers to `RCPT TO` (250 unless told otherwise), and how often it refused.
#[derive(Default)]
struct RcptAnswer {
    code: AtomicU16,
    refused: AtomicU64,
}

/// A real SMTP server (RFC 5321 subset: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) that
/// keeps every message it accepted.
#[derive(Clone)]
pub struct SmtpSink {
    messages: Arc<std::sync::Mutex<Vec<SmtpMessage>>>,
    rcpt: Arc<RcptAnswer>,
    pub port: u16,
}

impl SmtpSink {
    pub async fn start(shutdown: Shutdown) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let messages: Arc<std::sync::Mutex<Vec<SmtpMessage>>> = Arc::default();
        let store = messages.clone();
        let rcpt = Arc::new(RcptAnswer::default());
        rcpt.code.store(250, Ordering::SeqCst);
        let answer = rcpt.clone();
        tokio::spawn(async move {
            loop {
                let socket = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((socket, _)) => socket,
                        Err(_) => continue,
                    },
                    _ = shutdown.cancelled() => return,
                };
                let (store, answer) = (store.clone(), answer.clone());
                tokio::spawn(async move {
                    if let Err(e) = Self::session(socket, store, answer).await {
                        eprintln!("smtp sink session failed: {e:#}");
                    }
                });
            }
        });
        Ok(Self {
            messages,
            rcpt,
            port,
        })
    }

    async fn session(
        socket: tokio::net::TcpStream,
        store: Arc<std::sync::Mutex<Vec<SmtpMessage>>>,
        answer: Arc<RcptAnswer>,
    ) -> anyhow::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"220 sink ESMTP ready\r\n").await?;
        let mut recipients = Vec::new();
        while let Some(line) = lines.next_line().await? {
            let verb = line.get(..4).unwrap_or(&line).to_ascii_uppercase();
            let refusal;
            let reply: &[u8] = match verb.as_str() {
                "EHLO" | "HELO" => b"250 sink\r\n",
                "MAIL" => {
                    recipients.clear();
                    b"250 OK\r\n"
                }
                "RCPT" if answer.code.load(Ordering::SeqCst) != 250 => {
                    answer.refused.fetch_add(1, Ordering::SeqCst);
                    let code = answer.code.load(Ordering::SeqCst);
                    refusal = format!("{code} mailbox unavailable\r\n");
                    refusal.as_bytes()
                }
                "RCPT" => {
                    let to = line
                        .split_once(':')
                        .map(|(_, a)| a.trim().trim_matches(['<', '>']).to_string())
                        .unwrap_or_default();
                    recipients.push(to);
                    b"250 OK\r\n"
                }
                "DATA" => {
                    write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                    let mut data = String::new();
                    while let Some(l) = lines.next_line().await? {
                        if l == "." {
                            break;
                        }
                        data.push_str(l.strip_prefix('.').unwrap_or(&l));
                        data.push('\n');
                    }
                    let header = |name: &str| {
                        data.lines()
                            .take_while(|l| !l.is_empty())
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                            })
                            .unwrap_or_default()
                    };
                    let message = SmtpMessage {
                        recipients: std::mem::take(&mut recipients),
                        message_id: header("Message-ID"),
                        subject: header("Subject"),
                        data: data.clone(),
                    };
                    store.lock().unwrap().push(message);
                    b"250 OK queued\r\n"
                }
                "RSET" => {
                    recipients.clear();
                    b"250 OK\r\n"
                }
                "NOOP" => b"250 OK\r\n",
                "QUIT" => {
                    write.write_all(b"221 bye\r\n").await?;
                    return Ok(());
                }
                _ => b"502 command not implemented\r\n",
            };
            write.write_all(reply).await?;
        }
        Ok(())
    }

    pub fn messages(&self) -> Vec<SmtpMessage> {
        self.messages.lock().unwrap().clone()
    }

    /// The reply code to `RCPT TO` from now on: 250 accepts; a 5xx refuses every recipient
    /// permanently (RFC 5321), a 4xx for now.
    pub fn answer_rcpt(&self, code: u16) {
        self.rcpt.code.store(code, Ordering::SeqCst);
    }

    /// Recipients refused so far.
    pub fn refused(&self) -> u64 {
        self.rcpt.refused.load(Ordering::SeqCst)
    }
}
