//! MNIST in its IDX files (optionally gzipped): 28×28 grey digits.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use crate::error::{check_labels, read};
use crate::{DataError, Dataset, ImageShape, Split};

/// (images, labels) files of the train and test splits.
const TRAIN: (&str, &str) = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte");
const TEST: (&str, &str) = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte");
/// IDX magic numbers: unsigned bytes (0x08) with 3 or 1 dimensions.
const IMAGES_MAGIC: u32 = 0x0803;
const LABELS_MAGIC: u32 = 0x0801;
const CLASSES: usize = 10;

pub(crate) fn load(dir: &Path, shape: ImageShape) -> Result<Dataset, DataError> {
    let expected: Vec<String> = [TRAIN.0, TRAIN.1, TEST.0, TEST.1].iter().map(|name| format!("{name}[.gz]")).collect();
    let split = |(images, labels): (&str, &str)| -> Result<Split, DataError> {
        let (images_path, images) = read_idx(dir, images, &expected)?;
        let (labels_path, labels) = read_idx(dir, labels, &expected)?;
        let (dims, pixels) = parse(&images_path, &images, IMAGES_MAGIC)?;
        let (label_dims, labels) = parse(&labels_path, &labels, LABELS_MAGIC)?;
        if dims[0] != label_dims[0] {
            let reason = format!("{} images but {} has {} labels", dims[0], labels_path.display(), label_dims[0]);
            return Err(DataError::format(&images_path, reason));
        }
        check_labels(&labels_path, labels, CLASSES)?;
        let native = ImageShape::new(1, dims[1], dims[2]);
        Ok(Split { shape: native, images: pixels.to_vec(), labels: labels.to_vec() }.convert(shape))
    };
    let class_names = (0..CLASSES).map(|digit| digit.to_string()).collect();
    Ok(Dataset::new("mnist", class_names, split(TRAIN)?, split(TEST)?))
}

/// Contents of `dir/name`, or of `dir/name.gz` decompressed.
fn read_idx(dir: &Path, name: &str, expected: &[String]) -> Result<(PathBuf, Vec<u8>), DataError> {
    let plain = dir.join(name);
    if plain.is_file() {
        return Ok((plain.clone(), read(&plain)?));
    }
    let gz = dir.join(format!("{name}.gz"));
    if !gz.is_file() {
        return Err(DataError::Missing {
            dir: dir.to_owned(),
            file: format!("{name}[.gz]"),
            expected: expected.to_vec(),
        });
    }
    let mut bytes = Vec::new();
    GzDecoder::new(read(&gz)?.as_slice())
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::format(&gz, format!("not valid gzip: {e}")))?;
    Ok((gz, bytes))
}

/// Dimensions and data of an IDX file of unsigned bytes, checked against
/// `magic` (whose low byte is the number of dimensions) and the file size.
fn parse<'a>(path: &Path, bytes: &'a [u8], magic: u32) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let word = |i: usize| bytes.get(4 * i..4 * i + 4).map(|w| u32::from_be_bytes(w.try_into().unwrap()));
    let found = word(0).ok_or_else(|| DataError::format(path, "too short for an IDX header"))?;
    if found != magic {
        return Err(DataError::format(path, format!("bad IDX magic number {found}, expected {magic}")));
    }
    let rank = (magic & 0xff) as usize;
    let dims: Vec<usize> = (1..=rank)
        .map(|i| word(i).map(|d| d as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| DataError::format(path, "too short for an IDX header"))?;
    let data = &bytes[4 * (rank + 1)..];
    let size: usize = dims.iter().product();
    if data.len() != size {
        let reason = format!("header {dims:?} needs {size} bytes of data, found {}", data.len());
        return Err(DataError::format(path, reason));
    }
    Ok((dims, data))
}
