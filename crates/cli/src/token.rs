//! Where the bearer token comes from, for the agent and the host alike.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum TokenError {
    Unreadable { path: PathBuf, source: std::io::Error },
    Empty { path: PathBuf },
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Unreadable { path, .. } => write!(f, "cannot read token file {}", path.display()),
            TokenError::Empty { path } => write!(f, "token file {} is empty", path.display()),
        }
    }
}

impl std::error::Error for TokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenError::Unreadable { source, .. } => Some(source),
            TokenError::Empty { .. } => None,
        }
    }
}

/// Reads a token file, ignoring surrounding whitespace (editors add a newline).
pub fn read_token_file(path: &Path) -> Result<String, TokenError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| TokenError::Unreadable { path: path.to_owned(), source })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty { path: path.to_owned() });
    }
    Ok(token.to_owned())
}

/// The token to send: from `file` when given, otherwise `direct` (a flag or
/// environment variable). The file wins so that an explicit `--token-file`
/// is not overridden by a token lingering in the environment. An empty
/// `direct` token means none, as with `EDGELOOP_TOKEN= edgeloop ...`.
pub fn resolve_token(file: Option<&Path>, direct: Option<&str>) -> Result<Option<String>, TokenError> {
    match file {
        Some(path) => read_token_file(path).map(Some),
        None => Ok(direct.map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  abc123\n").unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "abc123");
        // The file wins over the environment.
        assert_eq!(resolve_token(Some(&path), Some("env")).unwrap().as_deref(), Some("abc123"));
    }

    #[test]
    fn missing_and_empty_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let error = read_token_file(&missing).unwrap_err();
        assert!(matches!(error, TokenError::Unreadable { .. }));
        assert!(error.to_string().contains(&*missing.to_string_lossy()), "{error}");

        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n\t").unwrap();
        let error = resolve_token(Some(&empty), Some("env")).unwrap_err();
        assert_eq!(error.to_string(), format!("token file {} is empty", empty.display()));
    }

    #[test]
    fn direct_tokens_are_trimmed_and_empty_means_none() {
        assert_eq!(resolve_token(None, Some(" t \n")).unwrap().as_deref(), Some("t"));
        assert_eq!(resolve_token(None, Some("  ")).unwrap(), None);
        assert_eq!(resolve_token(None, None).unwrap(), None);
    }
}
