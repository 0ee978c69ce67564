//! Embeds the bundled small zoo (`tests/zoo-small`) into the binary so that `modeltree demo` runs on a fresh
//! machine with no network and no setup. Each file becomes an `include_bytes!`; nothing is copied or compressed.

use std::{env, fs, io::Write, path::Path};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("zoo-small");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    if root.is_dir() {
        collect(&root, &root, &mut files);
    }
    files.sort();
    let out = Path::new(&env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("zoo_small.rs");
    let mut f = fs::File::create(out).expect("OUT_DIR is writable");
    writeln!(f, "/// The bundled small zoo: (path relative to the zoo root, bytes).").expect("write");
    writeln!(f, "pub static ZOO_SMALL: &[(&str, &[u8])] = &[").expect("write");
    for (rel, abs) in &files {
        writeln!(f, "    ({rel:?}, include_bytes!({abs:?})),").expect("write");
    }
    writeln!(f, "];").expect("write");
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        println!("cargo:rerun-if-changed={}", path.display());
        if path.is_dir() {
            collect(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            let rel = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            out.push((rel, path.display().to_string()));
        }
    }
}
