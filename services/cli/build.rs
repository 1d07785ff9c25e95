//! Embeds every `schemas/*.avsc` into the CLI (`paystream schemas check|register` without
//! `--dir`), so the image's CLI carries the contracts it was built with.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    // Read at run time: a build script binary cached in a shared target dir may have been
    // compiled for another checkout, and `env!` would point it at that checkout.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest_dir).join("../../schemas");
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
