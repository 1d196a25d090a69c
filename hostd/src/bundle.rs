//! App bundles: a tar archive whose `index.js` is the bundled module, and (from CLIs that send
//! them) the app's source files under `source/`. Validation happens before anything touches the
//! disk outside a temporary directory. Sources are checked but never unpacked: the sandbox
//! needs only the built module, and every file in a bundle directory is hard-linked into each
//! sandbox at every start. [`sources`] reads them back out of the stored archive.

use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// The file every bundle must contain: the module whose default export has `fetch`.
pub const ENTRY_FILE: &str = "index.js";
/// The top-level directory holding the app's source files in a bundle.
pub const SOURCE_DIR: &str = "source";
/// Most source files a bundle may carry.
pub const SOURCE_FILES_MAX: usize = 1_000;
/// Most bytes of source files a bundle may carry.
pub const SOURCE_BYTES_MAX: u64 = 8 * 1024 * 1024;

/// Why a bundle was refused. Messages are shown to the user as they are.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is not a readable tar archive: {0}")]
    NotTar(io::Error),
    #[error("bundle entry {0:?} escapes the bundle (absolute path or '..')")]
    PathEscape(String),
    #[error("bundle entry {0:?} is not a regular file or directory (links and devices are refused)")]
    BadEntryType(String),
    #[error("bundle holds more than {0} files")]
    TooManyFiles(usize),
    #[error("bundle unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("bundle has no {ENTRY_FILE} at its top level")]
    NoEntry,
    #[error("source entry {0:?} is not a regular file (links and devices are refused)")]
    BadSourceEntry(String),
    #[error("bundle carries more than {SOURCE_FILES_MAX} source files")]
    TooManySourceFiles,
    #[error("bundle carries more than {SOURCE_BYTES_MAX} bytes of source files")]
    SourcesTooLarge,
    #[error("storing bundle: {0}")]
    Io(#[from] io::Error),
}

/// Bounds on what a bundle may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub files_max: usize,
    pub unpacked_bytes_max: u64,
}

/// Unpacks `archive` into `destination` (which must not exist yet), read-only. Unpacks into a
/// sibling temporary directory first and renames, so `destination` is complete or absent.
pub fn unpack(archive: &[u8], destination: &Path, limits: Limits) -> Result<(), BundleError> {
    let parent = destination.parent().ok_or_else(|| io::Error::other("bundle destination has no parent"))?;
    std::fs::create_dir_all(parent)?;
    let staging = tempfile_dir(parent)?;
    let result = unpack_into(archive, &staging, limits);
    if let Err(error) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(error);
    }
    make_read_only(&staging)?;
    if let Err(error) = std::fs::rename(&staging, destination) {
        let _ = std::fs::remove_dir_all(&staging);
        // Another deploy of the same bundle won the race: the content is identical.
        if !destination.join(ENTRY_FILE).is_file() {
            return Err(error.into());
        }
    }
    Ok(())
}

fn tempfile_dir(parent: &Path) -> io::Result<PathBuf> {
    for attempt in 0..100u32 {
        let candidate = parent.join(format!(".staging-{}-{attempt}", std::process::id()));
        match std::fs::create_dir(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free staging directory name"))
}

fn unpack_into(archive: &[u8], staging: &Path, limits: Limits) -> Result<(), BundleError> {
    let mut tar = tar::Archive::new(archive);
    let (mut files, mut bytes) = (0usize, 0u64);
    let mut source_budget = SourceBudget::default();
    for entry in tar.entries().map_err(BundleError::NotTar)? {
        let mut entry = entry.map_err(BundleError::NotTar)?;
        let path = entry.path().map_err(BundleError::NotTar)?.into_owned();
        let shown = path.display().to_string();
        let relative = safe_relative(&path).ok_or_else(|| BundleError::PathEscape(shown.clone()))?;
        let kind = entry.header().entry_type();
        if relative.starts_with(SOURCE_DIR) {
            // Checked and counted, not unpacked: the tar reader skips the unread content.
            source_budget.admit(&shown, kind, entry.size())?;
            continue;
        }
        if kind.is_dir() {
            std::fs::create_dir_all(staging.join(&relative))?;
            continue;
        }
        if !kind.is_file() {
            return Err(BundleError::BadEntryType(shown));
        }
        files += 1;
        if files > limits.files_max {
            return Err(BundleError::TooManyFiles(limits.files_max));
        }
        let target = staging.join(&relative);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let budget = limits.unpacked_bytes_max - bytes;
        let mut out = std::fs::File::create(&target)?;
        let copied = io::copy(&mut (&mut entry).take(budget + 1), &mut out)?;
        bytes += copied;
        if bytes > limits.unpacked_bytes_max {
            return Err(BundleError::TooLarge(limits.unpacked_bytes_max));
        }
    }
    if !staging.join(ENTRY_FILE).is_file() {
        return Err(BundleError::NoEntry);
    }
    Ok(())
}

/// What the source entries of one archive used so far.
#[derive(Default)]
struct SourceBudget {
    files: usize,
    bytes: u64,
}

impl SourceBudget {
    /// Counts one entry under `source/`: directories pass, regular files count against the
    /// bounds, anything else is refused.
    fn admit(&mut self, shown: &str, kind: tar::EntryType, size_bytes: u64) -> Result<bool, BundleError> {
        if kind.is_dir() {
            return Ok(false);
        }
        if !kind.is_file() {
            return Err(BundleError::BadSourceEntry(shown.to_owned()));
        }
        self.files += 1;
        self.bytes = self.bytes.saturating_add(size_bytes);
        if self.files > SOURCE_FILES_MAX {
            return Err(BundleError::TooManySourceFiles);
        }
        if self.bytes > SOURCE_BYTES_MAX {
            return Err(BundleError::SourcesTooLarge);
        }
        Ok(true)
    }
}

/// The source files of a stored bundle as a tar archive of their own, paths relative to the
/// app's folder (the `source/` prefix removed); `None` when the bundle carries none (it was
/// deployed without them). Every entry is checked again, as at deploy.
pub fn sources(archive: &[u8]) -> Result<Option<Vec<u8>>, BundleError> {
    let mut tar = tar::Archive::new(archive);
    let mut out = tar::Builder::new(Vec::new());
    out.mode(tar::HeaderMode::Deterministic);
    let mut budget = SourceBudget::default();
    for entry in tar.entries().map_err(BundleError::NotTar)? {
        let mut entry = entry.map_err(BundleError::NotTar)?;
        let path = entry.path().map_err(BundleError::NotTar)?.into_owned();
        let shown = path.display().to_string();
        let relative = safe_relative(&path).ok_or_else(|| BundleError::PathEscape(shown.clone()))?;
        let Ok(inner) = relative.strip_prefix(SOURCE_DIR) else { continue };
        if !budget.admit(&shown, entry.header().entry_type(), entry.size())? || inner.as_os_str().is_empty() {
            continue;
        }
        let mut data = Vec::with_capacity(entry.size() as usize);
        (&mut entry).take(SOURCE_BYTES_MAX).read_to_end(&mut data)?;
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        out.append_data(&mut header, inner, data.as_slice())?;
    }
    Ok((budget.files > 0).then(|| out.into_inner()).transpose()?)
}

/// `path` with `.` removed, if it has only normal components.
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

fn make_read_only(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_read_only(&entry.path())?;
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o555))?;
        } else {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o444))?;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { files_max: 10, unpacked_bytes_max: 1024 };

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            // Write the name unchecked so tests can build hostile archives.
            header.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn unpacks_a_good_bundle_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("b");
        unpack(&archive(&[("index.js", b"export default {}"), ("lib/a.js", b"1")]), &dest, LIMITS).unwrap();
        assert_eq!(std::fs::read(dest.join("index.js")).unwrap(), b"export default {}");
        assert!(std::fs::metadata(dest.join("lib/a.js")).unwrap().permissions().readonly());
    }

    #[test]
    fn refuses_escapes_missing_entry_and_excess() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("b");
        let escape = unpack(&archive(&[("index.js", b""), ("../evil", b"x")]), &dest, LIMITS);
        assert!(matches!(escape, Err(BundleError::PathEscape(_))), "{escape:?}");
        assert!(matches!(unpack(&archive(&[("/etc/x", b"")]), &dest, LIMITS), Err(BundleError::PathEscape(_))));
        assert!(matches!(unpack(&archive(&[("a.js", b"")]), &dest, LIMITS), Err(BundleError::NoEntry)));
        let big = vec![0u8; 2000];
        assert!(matches!(unpack(&archive(&[("index.js", &big)]), &dest, LIMITS), Err(BundleError::TooLarge(_))));
        let many: Vec<(String, &[u8])> = (0..11).map(|i| (format!("f{i}"), &b""[..])).collect();
        let many: Vec<(&str, &[u8])> = many.iter().map(|(p, d)| (p.as_str(), *d)).collect();
        assert!(matches!(unpack(&archive(&many), &dest, LIMITS), Err(BundleError::TooManyFiles(_))));
        assert!(unpack(b"not a tar at all, just some bytes", &dest, LIMITS).is_err());
        assert!(!dest.exists(), "nothing is left behind by a refused bundle");
    }

    #[test]
    fn sources_are_checked_kept_out_of_the_bundle_directory_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("b");
        let bundle = archive(&[("index.js", b"x"), ("source/index.ts", b"ts"), ("source/lib/a.ts", b"a")]);
        unpack(&bundle, &dest, LIMITS).unwrap();
        assert!(!dest.join(SOURCE_DIR).exists(), "sources are not unpacked for the sandbox");
        let read_back = sources(&bundle).unwrap().expect("sources");
        let mut read = tar::Archive::new(read_back.as_slice());
        let mut found: Vec<(String, String)> = read
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut text = String::new();
                e.read_to_string(&mut text).unwrap();
                (e.path().unwrap().display().to_string(), text)
            })
            .collect();
        found.sort();
        assert_eq!(found, [("index.ts".into(), "ts".into()), ("lib/a.ts".into(), "a".into())]);
        assert!(sources(&archive(&[("index.js", b"x")])).unwrap().is_none(), "a bundle without sources");
    }

    #[test]
    fn refuses_bad_sources() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("b");
        let escape = unpack(&archive(&[("index.js", b""), ("source/../../x", b"x")]), &dest, LIMITS);
        assert!(matches!(escape, Err(BundleError::PathEscape(_))), "{escape:?}");
        let big = vec![b'x'; SOURCE_BYTES_MAX as usize + 1];
        let large = unpack(&archive(&[("index.js", b""), ("source/big.ts", &big)]), &dest, LIMITS);
        assert!(matches!(large, Err(BundleError::SourcesTooLarge)), "{large:?}");
        let names: Vec<String> = (0..=SOURCE_FILES_MAX).map(|i| format!("source/f{i}.ts")).collect();
        let mut files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
        files.push(("index.js", b""));
        let many = unpack(&archive(&files), &dest, Limits { files_max: 10, unpacked_bytes_max: 1024 });
        assert!(matches!(many, Err(BundleError::TooManySourceFiles)), "{many:?}");
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_link(&mut header, "source/link", "/etc/passwd").unwrap();
        let mut index = tar::Header::new_gnu();
        index.set_size(0);
        builder.append_data(&mut index, "index.js", &b""[..]).unwrap();
        let link = unpack(&builder.into_inner().unwrap(), &dest, LIMITS);
        assert!(matches!(link, Err(BundleError::BadSourceEntry(_))), "{link:?}");
        assert!(!dest.exists());
    }
}
