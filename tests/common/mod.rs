//! Shared by the integration tests (`tests/it`): the bundled zoo, the binary (plain or isolated for Hub work),
//! tree copies, the documented default scheme and a strict CSV reader.

pub mod csv;

use std::path::{Path, PathBuf};
use std::process::Command;

use signature::Scheme;

/// The bundled small zoo.
pub fn zoo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("zoo-small")
}

/// The binary on the database `db`, with quiet logs.
pub fn modeltree(db: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modeltree"));
    cmd.arg("--db").arg(db).env("MODELTREE_LOG", "error");
    cmd
}

/// The binary for Hub work with a clean environment: no token or endpoint, no developer settings (`MODELTREE_…`), a private
/// Hugging Face home and cache under `home`, and only warnings logged.
pub fn modeltree_isolated(db: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modeltree"));
    cmd.arg("--db")
        .arg(db)
        .env("MODELTREE_LOG", "warn")
        .env_remove("HF_TOKEN")
        .env_remove("HF_ENDPOINT")
        .env("HF_HOME", home)
        .env("HF_HUB_CACHE", home.join("hub"));
    for (name, _) in std::env::vars() {
        if name.starts_with("MODELTREE_") && name != "MODELTREE_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Runs `cmd`, which must succeed, and returns its standard output.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("modeltree runs");
    assert!(out.status.success(), "{:?} failed:\n{}", cmd, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Copies a tree of regular files.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The scheme the binary signs with when nothing overrides it: the documented default file's settings.
pub fn default_scheme() -> Scheme {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join("modeltree.toml");
    let text = std::fs::read_to_string(path).expect("config/modeltree.toml");
    let table: toml::Table = text.parse().expect("toml");
    let fraction = table["signature"]["row_fraction"].as_float().expect("row_fraction");
    Scheme { row_fraction: fraction, ..Scheme::default() }
}
