//! CIFAR-10, binary version: records of one label byte and a 3×32×32 image
//! already in CHW order.

use std::path::Path;

use crate::error::{check_labels, read};
use crate::{DataError, Dataset, ImageShape, Split};

const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
const TEST_FILE: &str = "test_batch.bin";
const META_FILE: &str = "batches.meta.txt";
const CLASS_NAMES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
const NATIVE: ImageShape = ImageShape::new(3, 32, 32);
const RECORD: usize = 1 + 3 * 32 * 32;

/// Loads `dir`, or `dir/cifar-10-batches-bin` where the archive was unpacked.
pub(crate) fn load(dir: &Path, shape: ImageShape) -> Result<Dataset, DataError> {
    let nested = dir.join("cifar-10-batches-bin");
    let dir = if nested.is_dir() { &nested } else { dir };
    let expected: Vec<String> = TRAIN_FILES.iter().chain([&TEST_FILE]).map(ToString::to_string).collect();
    if let Some(file) = expected.iter().find(|file| !dir.join(file).is_file()) {
        return Err(DataError::Missing { dir: dir.to_owned(), file: file.clone(), expected });
    }
    let mut train = Split::empty(NATIVE);
    for file in TRAIN_FILES {
        read_batch(&dir.join(file), &mut train)?;
    }
    let mut test = Split::empty(NATIVE);
    read_batch(&dir.join(TEST_FILE), &mut test)?;
    Ok(Dataset::new("cifar10", class_names(dir)?, train.convert(shape), test.convert(shape)))
}

fn read_batch(path: &Path, split: &mut Split) -> Result<(), DataError> {
    let bytes = read(path)?;
    if bytes.len() % RECORD != 0 {
        let reason = format!("{} bytes is not a whole number of {RECORD}-byte records", bytes.len());
        return Err(DataError::format(path, reason));
    }
    let start = split.len();
    for record in bytes.chunks_exact(RECORD) {
        split.push(&record[1..], record[0]);
    }
    check_labels(path, &split.labels[start..], CLASS_NAMES.len())
}

/// Names from `batches.meta.txt` (one per line) if present, else the standard ones.
fn class_names(dir: &Path) -> Result<Vec<String>, DataError> {
    let path = dir.join(META_FILE);
    if !path.is_file() {
        return Ok(CLASS_NAMES.iter().map(ToString::to_string).collect());
    }
    let text = String::from_utf8_lossy(&read(&path)?).into_owned();
    let names: Vec<String> = text.lines().map(str::trim).filter(|line| !line.is_empty()).map(String::from).collect();
    if names.len() != CLASS_NAMES.len() {
        return Err(DataError::format(&path, format!("{} class names, expected {}", names.len(), CLASS_NAMES.len())));
    }
    Ok(names)
}
