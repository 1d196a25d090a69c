//! Finding the programs steady runs: Bun, bubblewrap and steady's own binaries.

use std::path::{Path, PathBuf};

/// Finds `name`: `$STEADY_<NAME>` first, then PATH, then the `.tools/bin` that
/// `scripts/setup.sh` fills next to a source checkout this binary was built in.
pub fn find(name: &str) -> Option<PathBuf> {
    let variable = format!("STEADY_{}", name.to_ascii_uppercase());
    if let Some(path) = std::env::var_os(&variable).map(PathBuf::from).filter(|p| p.is_file()) {
        return Some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path).map(|dir| dir.join(name)).find(|c| c.is_file());
    on_path.or_else(|| {
        let exe = std::env::current_exe().ok()?;
        exe.ancestors().skip(1).take(4).map(|dir| dir.join(".tools/bin").join(name)).find(|c| c.is_file())
    })
}

/// A sibling binary of this executable (`steady-hostd` next to `steady`).
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().unwrap_or(Path::new(".")).join(name);
    anyhow::ensure!(path.is_file(), "{} not found next to {} (build the whole workspace)", name, exe.display());
    Ok(path)
}
