//! Embeds every `schemas/*.avsc` into the CLI (`paystream schemas check|register` without
//! `--dir`), so the image's CLI carries the contracts it was built with.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("reading schemas/")
        .map(|entry| entry.expect("listing schemas/").path())
        .filter(|path| path.extension().is_some_and(|e| e == "avsc"))
        .collect();
    files.sort();
    let mut out = String::from("&[\n");
    for path in files {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let absolute = path.canonicalize().expect("resolving a schema path");
        writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            absolute.display()
        )
        .unwrap();
    }
    out.push(']');
    let target = Path::new(&std::env::var("OUT_DIR").unwrap()).join("embedded_schemas.rs");
    std::fs::write(target, out).expect("writing embedded_schemas.rs");
}
