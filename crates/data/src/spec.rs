//! Which dataset to use, as a command-line string, and loading it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::{DataError, ImageShape, Split, cifar, folder, mnist, synthetic};

/// A loaded dataset, both splits in the requested input shape.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// "synthetic", "cifar10", "mnist" or "folder".
    pub name: String,
    pub classes: usize,
    pub class_names: Vec<String>,
    pub train: Split,
    pub test: Split,
}

impl Dataset {
    pub(crate) fn new(name: &str, class_names: Vec<String>, train: Split, test: Split) -> Self {
        Dataset { name: name.to_owned(), classes: class_names.len(), class_names, train, test }
    }
}

/// A dataset source: `synthetic[:TRAIN,TEST]`, `cifar10:DIR`, `mnist:DIR` or
/// `folder:DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetSpec {
    Synthetic { train: usize, test: usize },
    Cifar10(PathBuf),
    Mnist(PathBuf),
    Folder(PathBuf),
}

impl DatasetSpec {
    pub const DEFAULT_SYNTHETIC_TRAIN: usize = 6000;
    pub const DEFAULT_SYNTHETIC_TEST: usize = 1000;

    /// Loads both splits converted to `shape`. `seed` only matters where
    /// the data is drawn: synthetic images and a folder's test split.
    pub fn load(&self, shape: ImageShape, seed: u64) -> Result<Dataset, DataError> {
        if !matches!(shape.channels, 1 | 3) || shape.height == 0 || shape.width == 0 {
            return Err(DataError::Shape(shape));
        }
        match self {
            DatasetSpec::Synthetic { train, test } => Ok(synthetic::generate(*train, *test, shape, seed)),
            DatasetSpec::Cifar10(dir) => cifar::load(dir, shape),
            DatasetSpec::Mnist(dir) => mnist::load(dir, shape),
            DatasetSpec::Folder(dir) => folder::load(dir, shape, seed),
        }
    }
}

impl FromStr for DatasetSpec {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, DataError> {
        let invalid = |reason: String| DataError::Spec { spec: s.to_owned(), reason };
        let (kind, arg) = match s.split_once(':') {
            Some((kind, arg)) => (kind, Some(arg)),
            None => (s, None),
        };
        match (kind, arg) {
            ("synthetic", None) => {
                Ok(DatasetSpec::Synthetic { train: Self::DEFAULT_SYNTHETIC_TRAIN, test: Self::DEFAULT_SYNTHETIC_TEST })
            }
            ("synthetic", Some(sizes)) => {
                let (train, test) =
                    sizes.split_once(',').ok_or_else(|| invalid("synthetic sizes are TRAIN,TEST".into()))?;
                let count = |n: &str| n.trim().parse().map_err(|_| invalid(format!("`{n}` is not an image count")));
                Ok(DatasetSpec::Synthetic { train: count(train)?, test: count(test)? })
            }
            ("cifar10" | "mnist" | "folder", None | Some("")) => Err(invalid(format!("{kind} needs a directory"))),
            ("cifar10", Some(dir)) => Ok(DatasetSpec::Cifar10(dir.into())),
            ("mnist", Some(dir)) => Ok(DatasetSpec::Mnist(dir.into())),
            ("folder", Some(dir)) => Ok(DatasetSpec::Folder(dir.into())),
            _ => Err(invalid(format!("unknown dataset kind `{kind}`"))),
        }
    }
}

impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetSpec::Synthetic { train, test } => write!(f, "synthetic:{train},{test}"),
            DatasetSpec::Cifar10(dir) => write!(f, "cifar10:{}", dir.display()),
            DatasetSpec::Mnist(dir) => write!(f, "mnist:{}", dir.display()),
            DatasetSpec::Folder(dir) => write!(f, "folder:{}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let cases = [
            ("synthetic", DatasetSpec::Synthetic { train: 6000, test: 1000 }),
            ("synthetic:2000,500", DatasetSpec::Synthetic { train: 2000, test: 500 }),
            ("cifar10:data/cifar", DatasetSpec::Cifar10("data/cifar".into())),
            ("mnist:/tmp/mnist", DatasetSpec::Mnist("/tmp/mnist".into())),
            ("folder:C:/images", DatasetSpec::Folder("C:/images".into())),
        ];
        for (text, spec) in cases {
            assert_eq!(text.parse::<DatasetSpec>().unwrap(), spec, "{text}");
            assert_eq!(spec.to_string().parse::<DatasetSpec>().unwrap(), spec, "round trip of {text}");
        }
        assert_eq!(DatasetSpec::Synthetic { train: 2000, test: 500 }.to_string(), "synthetic:2000,500");
        assert_eq!(DatasetSpec::Mnist("m".into()).to_string(), "mnist:m");
    }

    #[test]
    fn bad_specs_list_accepted_forms() {
        for (text, reason) in [
            ("imagenet:/data", "unknown dataset kind `imagenet`"),
            ("cifar10", "cifar10 needs a directory"),
            ("folder:", "folder needs a directory"),
            ("synthetic:100", "TRAIN,TEST"),
            ("synthetic:100,x", "`x` is not an image count"),
            ("synthetic:-1,5", "`-1` is not an image count"),
            ("", "unknown dataset kind ``"),
        ] {
            let message = text.parse::<DatasetSpec>().unwrap_err().to_string();
            assert!(message.contains(reason), "{text}: {message}");
            assert!(message.contains(&format!("`{text}`")), "{message}");
            assert!(message.contains("synthetic:TRAIN,TEST, cifar10:DIR, mnist:DIR, folder:DIR"), "{message}");
        }
    }

    #[test]
    fn load_rejects_unsupported_shapes() {
        let spec = DatasetSpec::Synthetic { train: 1, test: 1 };
        for shape in [ImageShape::new(2, 32, 32), ImageShape::new(3, 0, 32)] {
            let message = spec.load(shape, 0).unwrap_err().to_string();
            assert!(message.contains(&shape.to_string()), "{message}");
        }
    }
}
