use std::path::{Path, PathBuf};

use crate::ImageShape;

/// Why a dataset could not be parsed or loaded; every message names the file
/// or directory at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(
        "invalid dataset `{spec}`: {reason} (accepted: synthetic, synthetic:TRAIN,TEST, cifar10:DIR, mnist:DIR, folder:DIR)"
    )]
    Spec { spec: String, reason: String },
    #[error("unsupported input shape {0}: channels must be 1 or 3, height and width positive")]
    Shape(ImageShape),
    #[error("{}: missing {file} (expected {})", dir.display(), expected.join(", "))]
    Missing { dir: PathBuf, file: String, expected: Vec<String> },
    #[error("reading {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    #[error("{}: label {label} out of range ({classes} classes)", path.display())]
    Label { path: PathBuf, label: u8, classes: usize },
    #[error("{}: no class folders (expected one subfolder of PNG/JPEG images per class)", dir.display())]
    NoClasses { dir: PathBuf },
    #[error("{}: {count} class folders, at most 256 are supported", dir.display())]
    TooManyClasses { dir: PathBuf, count: usize },
    #[error("{}: train/ has classes [{}] but test/ has [{}]", dir.display(), train.join(", "), test.join(", "))]
    ClassMismatch { dir: PathBuf, train: Vec<String>, test: Vec<String> },
    #[error("{}: cannot decode image: {source}", path.display())]
    Decode { path: PathBuf, source: image::ImageError },
}

impl DataError {
    pub(crate) fn format(path: &Path, reason: impl Into<String>) -> Self {
        DataError::Format { path: path.to_owned(), reason: reason.into() }
    }
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io { path: path.to_owned(), source })
}

/// Checks labels against the class count; `path` is the file they came from.
pub(crate) fn check_labels(path: &Path, labels: &[u8], classes: usize) -> Result<(), DataError> {
    match labels.iter().find(|&&label| usize::from(label) >= classes) {
        Some(&label) => Err(DataError::Label { path: path.to_owned(), label, classes }),
        None => Ok(()),
    }
}
