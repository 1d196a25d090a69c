//! An app's source files: gathered at deploy to travel in the bundle under `source/`, and
//! written back out by `steady pull` and `steady edit`.
//!
//! Sources are the user's own files: a single entry file, or every regular file under the app's
//! folder except dependencies (`node_modules`), hidden directories (`.git`, `.steady`, …) and
//! `.env` files, which hold secrets that belong in `steady env`, not in every version's bundle.
//! Links are not followed. The same bounds hold both ways; hosts check them again.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::exit::{Failure, FAILED, USAGE};

/// Most source files one version may carry (hosts refuse more).
pub const SOURCE_FILES_MAX: usize = 1_000;
/// Most bytes of source files one version may carry (hosts refuse more).
pub const SOURCE_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Most directory entries looked at while gathering, so a deploy of a huge folder by mistake
/// stops early.
const ENTRIES_SCANNED_MAX: usize = 100_000;
/// Directory names never gathered, besides hidden ones.
const SKIPPED_DIRS: &[&str] = &["node_modules"];

/// Source files by their path relative to the app's folder.
pub type Files = BTreeMap<PathBuf, Vec<u8>>;

fn too_many(what: String) -> anyhow::Error {
    Failure::new(USAGE, "too_many_sources", what).into()
}

/// Whether a file of that name is left out of the sources.
fn skipped_file(name: &str) -> bool {
    name == ".env" || name.starts_with(".env.")
}

/// The sources of an app deployed from `path` (an entry file or a folder).
pub fn gather(path: &Path) -> anyhow::Result<Files> {
    let mut files = Files::new();
    if path.is_file() {
        let name = path.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("index.ts"));
        files.insert(name, std::fs::read(path)?);
        check_bounds(&files)?;
        return Ok(files);
    }
    let mut pending = vec![PathBuf::new()];
    let (mut scanned, mut bytes) = (0usize, 0u64);
    while let Some(relative) = pending.pop() {
        for entry in std::fs::read_dir(path.join(&relative))? {
            let entry = entry?;
            scanned += 1;
            if scanned > ENTRIES_SCANNED_MAX {
                return Err(too_many(format!(
                    "{} holds more than {ENTRIES_SCANNED_MAX} entries; deploy the app's own folder",
                    path.display()
                )));
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type()?;
            if kind.is_dir() && !name.starts_with('.') && !SKIPPED_DIRS.contains(&name.as_str()) {
                pending.push(relative.join(&name));
            } else if kind.is_file() && !skipped_file(&name) {
                bytes += entry.metadata()?.len();
                files.insert(relative.join(&name), Vec::new());
                check_bounds_counted(path, files.len(), bytes)?;
            }
        }
    }
    for (relative, data) in files.iter_mut() {
        *data = std::fs::read(path.join(relative))?;
    }
    check_bounds(&files)?;
    Ok(files)
}

fn check_bounds(files: &Files) -> anyhow::Result<()> {
    let bytes = files.values().map(|d| d.len() as u64).sum();
    check_bounds_counted(Path::new("the app"), files.len(), bytes)
}

fn check_bounds_counted(path: &Path, count: usize, bytes: u64) -> anyhow::Result<()> {
    if count > SOURCE_FILES_MAX {
        return Err(too_many(format!(
            "{} has more than {SOURCE_FILES_MAX} source files (the limit; node_modules and hidden folders are left out)",
            path.display()
        )));
    }
    if bytes > SOURCE_BYTES_MAX {
        return Err(too_many(format!(
            "{}'s source files are more than {SOURCE_BYTES_MAX} bytes (the limit; node_modules and hidden folders are left out)",
            path.display()
        )));
    }
    Ok(())
}

/// `path` if it is relative with only normal components.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Reads a sources archive from a host, checking every entry as the host did.
pub fn read_archive(archive: &[u8]) -> anyhow::Result<Files> {
    let bad = |message: String| -> anyhow::Error { Failure::new(FAILED, "bad_sources", message).into() };
    let mut files = Files::new();
    let mut bytes = 0u64;
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries()? {
        let entry = entry?;
        let path = entry.path()?.into_owned();
        let relative = safe_relative(&path).ok_or_else(|| bad(format!("source entry {} escapes", path.display())))?;
        if entry.header().entry_type().is_dir() {
            continue;
        }
        if !entry.header().entry_type().is_file() {
            return Err(bad(format!("source entry {} is not a regular file", path.display())));
        }
        bytes += entry.size();
        if files.len() >= SOURCE_FILES_MAX || bytes > SOURCE_BYTES_MAX {
            return Err(bad(format!("the sources exceed {SOURCE_FILES_MAX} files or {SOURCE_BYTES_MAX} bytes")));
        }
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(entry, SOURCE_BYTES_MAX), &mut data)?;
        files.insert(relative, data);
    }
    Ok(files)
}

/// Writes `files` under `dir`. Files already there with other content are refused unless
/// `force` (nothing is written then); identical ones are left alone. Returns how many were
/// written.
pub fn write_out(files: &Files, dir: &Path, force: bool) -> anyhow::Result<usize> {
    let differing: Vec<String> = files
        .iter()
        .filter(|(relative, data)| std::fs::read(dir.join(relative)).is_ok_and(|existing| existing != **data))
        .map(|(relative, _)| relative.display().to_string())
        .collect();
    if !differing.is_empty() && !force {
        let message = format!(
            "{} already holds different versions of: {} (pass --force to overwrite them)",
            dir.display(),
            differing.join(", ")
        );
        return Err(Failure::new(crate::exit::CONFLICT, "would_overwrite", message).into());
    }
    let mut written = 0;
    for (relative, data) in files {
        let target = dir.join(relative);
        if std::fs::read(&target).is_ok_and(|existing| existing == *data) {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, data)?;
        written += 1;
    }
    Ok(written)
}

/// Appends `files` to `builder` under `source/`.
pub fn append(builder: &mut tar::Builder<Vec<u8>>, files: &Files) -> std::io::Result<()> {
    for (relative, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(0);
        builder.append_data(&mut header, Path::new("source").join(relative), data.as_slice())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_the_users_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (path, text) in [
            ("index.ts", "a"),
            ("lib/util.ts", "b"),
            ("node_modules/x/index.js", "c"),
            (".git/HEAD", "d"),
            (".steady/x", "e"),
            (".env", "SECRET=1"),
            (".env.local", "SECRET=2"),
            (".gitignore", "f"),
        ] {
            std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
            std::fs::write(root.join(path), text).unwrap();
        }
        let files = gather(root).unwrap();
        let names: Vec<String> = files.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(names, [".gitignore", "index.ts", "lib/util.ts"]);
        let single = gather(&root.join("lib/util.ts")).unwrap();
        assert_eq!(single.keys().next().unwrap(), Path::new("util.ts"));
    }

    #[test]
    fn bounds_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..=SOURCE_FILES_MAX {
            std::fs::write(dir.path().join(format!("f{i}.ts")), "").unwrap();
        }
        let error = gather(dir.path()).unwrap_err().to_string();
        assert!(error.contains("more than 1000 source files"), "{error}");

        let files: Files = [(PathBuf::from("a/b.ts"), b"x".to_vec())].into();
        let mut builder = tar::Builder::new(Vec::new());
        append(&mut builder, &files).unwrap();
        let archive = builder.into_inner().unwrap();
        // What a host sends back has the prefix removed; here it is read as the host would.
        let mut stripped = tar::Builder::new(Vec::new());
        let mut read = tar::Archive::new(archive.as_slice());
        for entry in read.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().strip_prefix("source").unwrap().to_owned();
            let mut header = entry.header().clone();
            stripped.append_data(&mut header, path, entry).unwrap();
        }
        let back = read_archive(&stripped.into_inner().unwrap()).unwrap();
        assert_eq!(back, files);
        let out = tempfile::tempdir().unwrap();
        assert_eq!(write_out(&back, out.path(), false).unwrap(), 1);
        assert_eq!(write_out(&back, out.path(), false).unwrap(), 0, "identical files are left alone");
        std::fs::write(out.path().join("a/b.ts"), "changed").unwrap();
        assert!(write_out(&back, out.path(), false).is_err());
        assert_eq!(write_out(&back, out.path(), true).unwrap(), 1);
    }
}
