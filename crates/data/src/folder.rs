//! Class-per-subfolder PNG/JPEG images, with `train/` and `test/` or split
//! here. Names are sorted, so labels and order do not depend on the file
//! system.

use std::fs;
use std::path::{Path, PathBuf};

use crate::convert::convert_into;
use crate::{DataError, Dataset, ImageShape, Split};

/// Without `test/`, one image in this many is held out as test, stratified by class.
const TEST_EVERY: usize = 5;

pub(crate) fn load(dir: &Path, shape: ImageShape, seed: u64) -> Result<Dataset, DataError> {
    let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
    let (class_names, train, test) = if train_dir.is_dir() && test_dir.is_dir() {
        let (train, test) = (class_folders(&train_dir)?, class_folders(&test_dir)?);
        if train != test {
            return Err(DataError::ClassMismatch { dir: dir.to_owned(), train, test });
        }
        let (train_split, test_split) = (read_split(&train_dir, &train, shape)?, read_split(&test_dir, &test, shape)?);
        (train, train_split, test_split)
    } else {
        let classes = class_folders(dir)?;
        let all = read_split(dir, &classes, shape)?;
        let held_out = all.len() / TEST_EVERY;
        let (train, test) = all.split_off(held_out, seed);
        (classes, train, test)
    };
    Ok(Dataset::new("folder", class_names, train, test))
}

/// Sorted names of the subfolders of `dir` (hidden ones skipped).
fn class_folders(dir: &Path) -> Result<Vec<String>, DataError> {
    let mut names: Vec<String> = entries(dir)?
        .into_iter()
        .filter(|path| path.is_dir())
        .filter_map(|path| path.file_name().map(|name| name.to_string_lossy().into_owned()))
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    match names.len() {
        0 => Err(DataError::NoClasses { dir: dir.to_owned() }),
        count if count > 256 => Err(DataError::TooManyClasses { dir: dir.to_owned(), count }),
        _ => Ok(names),
    }
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let io = |source| DataError::Io { path: dir.to_owned(), source };
    fs::read_dir(dir).map_err(io)?.map(|entry| entry.map(|e| e.path()).map_err(io)).collect()
}

/// Every image of every class folder, in sorted order.
fn read_split(dir: &Path, classes: &[String], shape: ImageShape) -> Result<Split, DataError> {
    let mut split = Split::empty(shape);
    for (label, class) in classes.iter().enumerate() {
        let mut files: Vec<PathBuf> = entries(&dir.join(class))?.into_iter().filter(|path| is_image(path)).collect();
        files.sort();
        for path in files {
            let (native, pixels) = decode(&path)?;
            convert_into(&pixels, native, shape, &mut split.images);
            split.labels.push(label as u8);
        }
    }
    Ok(split)
}

fn is_image(path: &Path) -> bool {
    let extension = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
    path.is_file() && matches!(extension.as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// The image as CHW bytes: RGB if it has colour, else grey (alpha dropped).
fn decode(path: &Path) -> Result<(ImageShape, Vec<u8>), DataError> {
    let image = image::open(path).map_err(|source| DataError::Decode { path: path.to_owned(), source })?;
    let (width, height) = (image.width() as usize, image.height() as usize);
    if !image.color().has_color() {
        return Ok((ImageShape::new(1, height, width), image.into_luma8().into_raw()));
    }
    let rgb = image.into_rgb8().into_raw();
    let chw = (0..3).flat_map(|c| rgb.iter().skip(c).step_by(3).copied()).collect();
    Ok((ImageShape::new(3, height, width), chw))
}
