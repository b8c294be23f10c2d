//! Content-addressed model store: `<dir>/<sha256>.onnx`, written atomically
//! (`edgeloop_durable::write_atomic`), evicted least-recently-used beyond a byte budget. File
//! modification times record last use, so the LRU order survives restarts.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use edgeloop_api::ModelInfo;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("`{0}` is not a sha256 (64 lowercase hex digits)")]
    BadHash(String),
    #[error("body hashes to {actual}, not {claimed}")]
    HashMismatch { claimed: String, actual: String },
    #[error("model store I/O on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// Whether `put` stored a new model or found it already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New,
    AlreadyPresent,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    last_used: SystemTime,
}

pub struct ModelStore {
    dir: PathBuf,
    max_total_bytes: u64,
    entries: Mutex<HashMap<String, Entry>>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn check_hash(s: &str) -> Result<(), StoreError> {
    let ok = s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok { Ok(()) } else { Err(StoreError::BadHash(s.to_string())) }
}

const SUFFIX: &str = ".onnx";

impl ModelStore {
    /// Opens (creating) `dir`, indexes the models in it and removes uploads
    /// that a crash left half-written.
    pub fn open(dir: &Path, max_total_bytes: u64) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut entries = HashMap::new();
        for item in fs::read_dir(dir).map_err(io_err(dir))? {
            let item = item.map_err(io_err(dir))?;
            let path = item.path();
            let name = item.file_name().to_string_lossy().into_owned();
            if edgeloop_durable::is_temp_name(&name) {
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(hash) = name.strip_suffix(SUFFIX) else { continue };
            if check_hash(hash).is_err() {
                continue;
            }
            let meta = item.metadata().map_err(io_err(&path))?;
            let last_used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            entries.insert(hash.to_string(), Entry { size: meta.len(), last_used });
        }
        Ok(ModelStore { dir: dir.to_path_buf(), max_total_bytes, entries: Mutex::new(entries) })
    }

    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}{SUFFIX}"))
    }

    pub fn info(&self, sha256: &str) -> Option<ModelInfo> {
        let entries = self.entries.lock().unwrap();
        entries.get(sha256).map(|e| ModelInfo { sha256: sha256.to_string(), size_bytes: e.size })
    }

    /// Where a stored model is, marking it used. Its reader must still
    /// expect it gone: eviction may remove it in between.
    pub fn locate(&self, sha256: &str) -> Option<PathBuf> {
        self.info(sha256)?;
        self.touch(sha256);
        Some(self.path_of(sha256))
    }

    fn touch(&self, sha256: &str) {
        let now = SystemTime::now();
        if let Some(e) = self.entries.lock().unwrap().get_mut(sha256) {
            e.last_used = now;
        }
        // Best effort: the in-memory order is what evicts; the mtime only
        // carries it over a restart.
        if let Ok(f) = fs::File::options().append(true).open(self.path_of(sha256)) {
            let _ = f.set_modified(now);
        }
    }

    /// Verifies `bytes` against `sha256` and stores them (temp file, fsync,
    /// rename), then evicts least-recently-used models over the budget.
    pub fn put(&self, sha256: &str, bytes: &[u8]) -> Result<Stored, StoreError> {
        check_hash(sha256)?;
        if self.info(sha256).is_some() {
            self.touch(sha256);
            return Ok(Stored::AlreadyPresent);
        }
        let actual = sha256_hex(bytes);
        if actual != sha256 {
            return Err(StoreError::HashMismatch { claimed: sha256.to_string(), actual });
        }
        let path = self.path_of(sha256);
        edgeloop_durable::write_atomic(&path, bytes).map_err(io_err(&path))?;
        self.entries
            .lock()
            .unwrap()
            .insert(sha256.to_string(), Entry { size: bytes.len() as u64, last_used: SystemTime::now() });
        self.evict_over_budget(sha256);
        Ok(Stored::New)
    }

    /// Removes least-recently-used models until the total fits, never `keep`.
    fn evict_over_budget(&self, keep: &str) {
        let mut entries = self.entries.lock().unwrap();
        let mut total: u64 = entries.values().map(|e| e.size).sum();
        let mut by_age: Vec<(String, Entry)> =
            entries.iter().filter(|(h, _)| h.as_str() != keep).map(|(h, e)| (h.clone(), *e)).collect();
        by_age.sort_by_key(|(_, e)| e.last_used);
        for (hash, entry) in by_age {
            if total <= self.max_total_bytes {
                break;
            }
            let path = self.path_of(&hash);
            match fs::remove_file(&path) {
                Ok(()) => log::info!("evicted least recently used model={hash} bytes={}", entry.size),
                Err(e) => log::warn!("could not evict model={hash}: {e}"),
            }
            entries.remove(&hash);
            total -= entry.size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_is_idempotent_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path(), 1 << 20).unwrap();
        let bytes = b"model bytes".to_vec();
        let hash = sha256_hex(&bytes);
        assert_eq!(store.put(&hash, &bytes).unwrap(), Stored::New);
        assert_eq!(store.put(&hash, &bytes).unwrap(), Stored::AlreadyPresent);
        assert!(matches!(store.put(&"0".repeat(64), &bytes), Err(StoreError::HashMismatch { .. })));
        assert!(matches!(store.put("nothex", &bytes), Err(StoreError::BadHash(_))));
        assert_eq!(fs::read(store.locate(&hash).unwrap()).unwrap(), bytes);
        let reopened = ModelStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(reopened.info(&hash).unwrap().size_bytes, bytes.len() as u64);
    }

    #[test]
    fn least_recently_used_models_are_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path(), 250).unwrap();
        let models: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 100]).collect();
        let hashes: Vec<String> = models.iter().map(|m| sha256_hex(m)).collect();
        store.put(&hashes[0], &models[0]).unwrap();
        store.put(&hashes[1], &models[1]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        store.locate(&hashes[0]).unwrap(); // 0 is now more recent than 1
        store.put(&hashes[2], &models[2]).unwrap();
        assert!(store.info(&hashes[0]).is_some());
        assert!(store.info(&hashes[1]).is_none(), "least recently used is evicted");
        assert!(!store.path_of(&hashes[1]).exists());
        assert!(store.info(&hashes[2]).is_some());
    }

    #[test]
    fn leftover_uploads_are_cleaned_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let leftover = format!(".{}{SUFFIX}.tmp-1-0", "a".repeat(64));
        assert!(edgeloop_durable::is_temp_name(&leftover));
        fs::write(dir.path().join(&leftover), b"half").unwrap();
        let store = ModelStore::open(dir.path(), 1 << 20).unwrap();
        assert!(!dir.path().join(&leftover).exists());
        assert!(store.info(&"a".repeat(64)).is_none());
    }
}
