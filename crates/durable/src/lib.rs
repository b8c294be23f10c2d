//! Files that survive a crash, written one way everywhere (DESIGN §12):
//!
//! - [`write_atomic`] replaces a file whole or not at all: a temp file in the
//!   same folder, fsynced, renamed over the target, and the folder fsynced so
//!   that the rename itself survives a power cut. [`create_new`] does the
//!   same without replacing a file someone else created meanwhile.
//! - [`LineLog`] appends lines: each in one write, fsynced before `append`
//!   returns. The one torn-line policy: a last line without its newline (a
//!   writer killed mid-write) is cut off when the log is opened for
//!   appending, and [`complete_lines`] is what readers parse meanwhile.
//! - [`DirLock`] keeps a second process out of a run directory.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Temp files of this process, numbered so that concurrent writers of one
/// path (threads of the agent's store) never share one.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The folder a file lives in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A fresh temp path beside `path`: hidden, and recognisable by [`is_temp_name`].
fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(|| "file".into(), |n| n.to_string_lossy());
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    folder_of(path).join(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Whether a file name is one of [`write_atomic`]'s temp files (left over
/// when a writer was killed; safe to delete when no writer runs).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Makes a new, renamed or removed entry of `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes `bytes` to a fsynced temp file beside `path` and hands it to
/// `place`; the temp file is removed whatever happens.
fn through_temp(path: &Path, bytes: &[u8], place: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    let tmp = temp_beside(path);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        place(&tmp)
    })();
    // Gone after a rename; still there after a link or a failure.
    let _ = fs::remove_file(&tmp);
    result?;
    sync_dir(folder_of(path))
}

/// Replaces `path` with `bytes`, whole or not at all.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    through_temp(path, bytes, |tmp| fs::rename(tmp, path))
}

/// Pretty JSON with a final newline, written with [`write_atomic`].
pub fn write_json(path: &Path, value: &impl Serialize) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)? + "\n";
    write_atomic(path, text.as_bytes())
}

/// Creates `path` holding `bytes` unless it exists (then `Ok(false)`):
/// complete when it appears, and never replacing a file another process
/// created meanwhile (a hard link fails where a rename would replace).
pub fn create_new(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let mut created = true;
    through_temp(path, bytes, |tmp| match fs::hard_link(tmp, path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            created = false;
            Ok(())
        }
        other => other,
    })?;
    Ok(created)
}

/// `bytes` up to and including their last newline: the lines a writer
/// finished. Readers parse this and ignore a torn last line.
pub fn complete_lines(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)]
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{} is open for appending in another process", path.display())]
    Locked { path: PathBuf },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A file of lines, appended crash-safely by one process at a time (it
/// holds an exclusive lock on the file while open).
#[derive(Debug)]
pub struct LineLog {
    path: PathBuf,
    file: File,
    /// Bytes of a torn last line cut off on open.
    cut: u64,
}

impl LineLog {
    /// Opens `path` for appending, creating it empty when missing. Returns
    /// the log and its complete lines; a torn last line is cut off first.
    pub fn open(path: &Path) -> Result<(LineLog, Vec<u8>), LogError> {
        let io = |action| move |source| LogError::Io { action, path: path.to_path_buf(), source };
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(io("open"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(LogError::Locked { path: path.to_path_buf() }),
            Err(TryLockError::Error(e)) => return Err(io("lock")(e)),
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io("read"))?;
        let complete = complete_lines(&bytes).len();
        let cut = (bytes.len() - complete) as u64;
        if cut > 0 {
            file.set_len(complete as u64).map_err(io("cut the torn last line of"))?;
            file.sync_all().map_err(io("sync"))?;
            bytes.truncate(complete);
        }
        Ok((LineLog { path: path.to_path_buf(), file, cut }, bytes))
    }

    /// Appends `line` (a newline is added when it lacks one) in one write,
    /// and fsyncs it.
    pub fn append(&mut self, line: &[u8]) -> Result<(), LogError> {
        let mut buf = line.to_vec();
        if buf.last() != Some(&b'\n') {
            buf.push(b'\n');
        }
        let path = &self.path;
        let io = |action| move |source| LogError::Io { action, path: path.clone(), source };
        self.file.write_all(&buf).map_err(io("append to"))?;
        self.file.sync_data().map_err(io("sync"))
    }

    /// How many bytes of a torn last line `open` cut off.
    pub fn cut_on_open(&self) -> u64 {
        self.cut
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DirLockError {
    #[error(
        "{} is in use by another process{}; wait for it to finish, or choose another folder",
        dir.display(),
        pid.map_or(String::new(), |p| format!(" (pid {p})"))
    )]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("locking {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An exclusive lock on a directory (its `.lock` file, which names the
/// holder's pid), released when dropped or when the process dies.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// The lock file of a directory.
pub const LOCK_FILE: &str = ".lock";

impl DirLock {
    /// Takes the lock of `dir` (which must exist), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, DirLockError> {
        let io = |source| DirLockError::Io { dir: dir.to_path_buf(), source };
        let path = dir.join(LOCK_FILE);
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let pid = file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse().ok());
                return Err(DirLockError::Held { dir: dir.to_path_buf(), pid });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn write_atomic_replaces_whole_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("result.json");
        write_atomic(&path, b"old").unwrap();
        write_json(&path, &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\n  \"a\": 1\n}\n");
        assert_eq!(names(dir.path()), ["result.json"]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        fs::create_dir(&path).unwrap(); // a rename over a directory fails
        assert!(write_atomic(&path, b"bytes").is_err());
        assert!(path.is_dir());
        assert_eq!(names(dir.path()), ["model.onnx"]);
    }

    #[test]
    fn create_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.csv");
        assert!(create_new(&path, b"header\n").unwrap());
        assert!(!create_new(&path, b"other\n").unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"header\n");
        assert_eq!(names(dir.path()), ["table.csv"]);
    }

    #[test]
    fn temp_names_are_recognised() {
        let tmp = temp_beside(Path::new("/x/abc.onnx"));
        assert!(is_temp_name(&tmp.file_name().unwrap().to_string_lossy()));
        assert!(!is_temp_name("abc.onnx") && !is_temp_name(".lock"));
    }

    #[test]
    fn a_torn_last_line_is_cut_on_open_and_appends_start_on_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        fs::write(&path, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        assert_eq!(complete_lines(&fs::read(&path).unwrap()), b"{\"a\":1}\n{\"b\":2}\n");
        let (mut log, lines) = LineLog::open(&path).unwrap();
        assert_eq!(lines, b"{\"a\":1}\n{\"b\":2}\n");
        assert_eq!(log.cut_on_open(), 5);
        log.append(b"{\"d\":4}").unwrap();
        log.append(b"{\"e\":5}\n").unwrap();
        drop(log);
        assert_eq!(fs::read(&path).unwrap(), b"{\"a\":1}\n{\"b\":2}\n{\"d\":4}\n{\"e\":5}\n");
        // A file that is one torn line holds no line at all.
        fs::write(&path, b"torn").unwrap();
        assert_eq!(LineLog::open(&path).unwrap().1, b"");
        assert_eq!(fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn a_log_has_one_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.jsonl");
        let (_log, _) = LineLog::open(&path).unwrap();
        assert!(matches!(LineLog::open(&path), Err(LogError::Locked { .. })));
    }

    #[test]
    fn a_directory_lock_is_exclusive_names_its_holder_and_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire(dir.path()).unwrap();
        let held = DirLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(held, DirLockError::Held { pid: Some(p), .. } if p == std::process::id()), "{held:?}");
        assert!(held.to_string().contains("in use by another process"), "{held}");
        drop(lock);
        DirLock::acquire(dir.path()).unwrap();
    }
}
