//! The file-based loaders, on tiny fixtures written here.

use std::fs;
use std::io::Write;
use std::path::Path;

use edgeloop_data::{DatasetSpec, ImageShape};
use flate2::Compression;
use flate2::write::GzEncoder;
use image::{GrayImage, Luma, Rgb, RgbImage};

const RGB32: ImageShape = ImageShape::new(3, 32, 32);

fn load_err(spec: &DatasetSpec, shape: ImageShape) -> String {
    spec.load(shape, 0).unwrap_err().to_string()
}

// CIFAR-10

/// A record whose pixel (c, y, x) is `label + c + y + x`.
fn cifar_record(label: u8) -> Vec<u8> {
    let mut record = vec![label];
    for c in 0..3 {
        for y in 0..32 {
            record.extend((0..32).map(|x| label + c + y + x));
        }
    }
    record
}

/// Three records per file; train labels 0..15 % 10, test labels 7, 8, 9.
fn write_cifar(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for batch in 0..5u8 {
        let records: Vec<u8> = (0..3).flat_map(|i| cifar_record((batch * 3 + i) % 10)).collect();
        fs::write(dir.join(format!("data_batch_{}.bin", batch + 1)), records).unwrap();
    }
    fs::write(dir.join("test_batch.bin"), [7, 8, 9].map(cifar_record).concat()).unwrap();
}

#[test]
fn cifar_labels_and_pixel_order() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar(tmp.path());
    let data = DatasetSpec::Cifar10(tmp.path().into()).load(RGB32, 0).unwrap();
    assert_eq!((data.name.as_str(), data.classes), ("cifar10", 10));
    assert_eq!(data.class_names[0], "airplane");
    assert_eq!(data.train.labels, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4]);
    assert_eq!(data.test.labels, [7, 8, 9]);
    let image = data.test.image(1);
    // CHW: channel 2, row 3, column 5 of label 8's image.
    assert_eq!(image[2 * 1024 + 3 * 32 + 5], 8 + 2 + 3 + 5);
    assert_eq!(image, &cifar_record(8)[1..]);
}

#[test]
fn cifar_nested_dir_meta_names_and_grey() {
    let tmp = tempfile::tempdir().unwrap();
    let nested = tmp.path().join("cifar-10-batches-bin");
    write_cifar(&nested);
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    fs::write(nested.join("batches.meta.txt"), names.join("\n") + "\n\n").unwrap();
    let data = DatasetSpec::Cifar10(tmp.path().into()).load(ImageShape::new(1, 16, 16), 0).unwrap();
    assert_eq!(data.class_names, names);
    assert_eq!((data.train.len(), data.train.images.len()), (15, 15 * 16 * 16));
}

#[test]
fn cifar_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = DatasetSpec::Cifar10(tmp.path().into());
    let message = load_err(&spec, RGB32);
    assert!(message.contains("missing data_batch_1.bin"), "{message}");
    assert!(message.contains("data_batch_5.bin, test_batch.bin"), "{message}");

    write_cifar(tmp.path());
    fs::write(tmp.path().join("data_batch_3.bin"), [0; 3073 + 5]).unwrap();
    let message = load_err(&spec, RGB32);
    assert!(message.contains("data_batch_3.bin") && message.contains("3078 bytes"), "{message}");

    fs::write(tmp.path().join("data_batch_3.bin"), cifar_record(10)).unwrap();
    let message = load_err(&spec, RGB32);
    assert!(message.contains("data_batch_3.bin: label 10 out of range"), "{message}");
}

// MNIST

/// IDX file of unsigned bytes with the given magic and dimensions.
fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let header = std::iter::once(&magic).chain(dims).flat_map(|w| w.to_be_bytes());
    header.chain(data.iter().copied()).collect()
}

/// Two train and one test 28×28 image; pixel (y, x) of image i is `i * 50 + x`.
fn write_mnist(dir: &Path, gz: bool) {
    let images = |n: u8| -> Vec<u8> {
        (0..n).flat_map(|i| (0..28).flat_map(move |_| (0..28).map(move |x| i * 50 + x))).collect()
    };
    let files = [
        ("train-images-idx3-ubyte", idx(2051, &[2, 28, 28], &images(2))),
        ("train-labels-idx1-ubyte", idx(2049, &[2], &[3, 9])),
        ("t10k-images-idx3-ubyte", idx(2051, &[1, 28, 28], &images(1))),
        ("t10k-labels-idx1-ubyte", idx(2049, &[1], &[4])),
    ];
    for (name, bytes) in files {
        if gz {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
            encoder.write_all(&bytes).unwrap();
            fs::write(dir.join(format!("{name}.gz")), encoder.finish().unwrap()).unwrap();
        } else {
            fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

#[test]
fn mnist_plain_and_gzipped() {
    for gz in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        write_mnist(tmp.path(), gz);
        let data = DatasetSpec::Mnist(tmp.path().into()).load(ImageShape::new(1, 28, 28), 0).unwrap();
        assert_eq!((data.name.as_str(), data.classes, data.class_names[9].as_str()), ("mnist", 10, "9"));
        assert_eq!((data.train.labels.as_slice(), data.test.labels.as_slice()), (&[3, 9][..], &[4][..]));
        assert_eq!(data.train.image(1)[5 * 28 + 7], 57, "gz: {gz}");
    }
}

#[test]
fn mnist_to_rgb32_replicates_the_channel() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist(tmp.path(), false);
    let data = DatasetSpec::Mnist(tmp.path().into()).load(RGB32, 0).unwrap();
    assert_eq!((data.train.shape, data.train.images.len()), (RGB32, 2 * 3 * 32 * 32));
    let image = data.train.image(1);
    let (r, rest) = image.split_at(1024);
    assert_eq!((r, r), rest.split_at(1024));
    // A horizontal ramp stays a ramp, rows identical.
    assert!(r[..32].windows(2).all(|w| w[0] <= w[1]) && r[0] < r[31], "{:?}", &r[..32]);
    assert_eq!(&r[..32], &r[32 * 20..32 * 21]);
}

#[test]
fn mnist_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = DatasetSpec::Mnist(tmp.path().into());
    let shape = ImageShape::new(1, 28, 28);
    let message = load_err(&spec, shape);
    assert!(message.contains("missing train-images-idx3-ubyte[.gz]"), "{message}");
    assert!(message.contains("t10k-labels-idx1-ubyte[.gz]"), "{message}");

    write_mnist(tmp.path(), false);
    let labels = tmp.path().join("t10k-labels-idx1-ubyte");
    fs::write(&labels, idx(2051, &[1], &[4])).unwrap();
    let message = load_err(&spec, shape);
    assert!(message.contains("t10k-labels-idx1-ubyte: bad IDX magic number 2051, expected 2049"), "{message}");

    fs::write(&labels, idx(2049, &[2], &[4, 4])).unwrap();
    let message = load_err(&spec, shape);
    assert!(message.contains("1 images but") && message.contains("has 2 labels"), "{message}");

    fs::write(&labels, idx(2049, &[1], &[4, 4])).unwrap();
    let message = load_err(&spec, shape);
    assert!(message.contains("t10k-labels-idx1-ubyte: header [1] needs 1 bytes of data, found 2"), "{message}");

    fs::write(&labels, idx(2049, &[1], &[12])).unwrap();
    let message = load_err(&spec, shape);
    assert!(message.contains("t10k-labels-idx1-ubyte: label 12 out of range"), "{message}");
}

// Class folders

/// `n` images of `class` in `dir/class`, alternating PNG (RGB) and JPEG
/// (grey), plus a file that is not an image.
fn write_class(dir: &Path, class: &str, n: u8, value: u8) {
    let dir = dir.join(class);
    fs::create_dir_all(&dir).unwrap();
    for i in 0..n {
        if i % 2 == 0 {
            RgbImage::from_pixel(40, 30, Rgb([value, value, value])).save(dir.join(format!("{i:02}.png"))).unwrap();
        } else {
            GrayImage::from_pixel(20, 20, Luma([value])).save(dir.join(format!("{i:02}.JPG"))).unwrap();
        }
    }
    fs::write(dir.join("notes.txt"), "not an image").unwrap();
}

#[test]
fn folder_split_here() {
    let tmp = tempfile::tempdir().unwrap();
    write_class(tmp.path(), "dog", 10, 200);
    write_class(tmp.path(), "cat", 5, 50);
    let spec = DatasetSpec::Folder(tmp.path().into());
    let data = spec.load(RGB32, 1).unwrap();
    assert_eq!((data.name.as_str(), data.class_names.clone()), ("folder", vec!["cat".to_string(), "dog".to_string()]));
    assert_eq!((data.train.class_counts(2), data.test.class_counts(2)), (vec![4, 8], vec![1, 2]));
    assert_eq!(data.train.shape, RGB32);
    for split in [&data.train, &data.test] {
        for i in 0..split.len() {
            let expected = if split.labels[i] == 0 { 50 } else { 200 };
            // JPEG is lossy: within a few levels.
            assert!(split.image(i).iter().all(|&p| p.abs_diff(expected) <= 3), "image {i}");
        }
    }
    let again = spec.load(RGB32, 1).unwrap();
    assert_eq!((data.train, data.test), (again.train, again.test));
}

#[test]
fn folder_with_train_and_test() {
    let tmp = tempfile::tempdir().unwrap();
    for class in ["a", "b", "c"] {
        write_class(&tmp.path().join("train"), class, 3, 100);
        write_class(&tmp.path().join("test"), class, 2, 100);
    }
    let spec = DatasetSpec::Folder(tmp.path().into());
    let data = spec.load(ImageShape::new(1, 8, 8), 0).unwrap();
    assert_eq!(data.classes, 3);
    assert_eq!(data.train.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2]);
    assert_eq!(data.test.labels, [0, 0, 1, 1, 2, 2]);
    assert_eq!(data.test.images.len(), 6 * 8 * 8);

    write_class(&tmp.path().join("test"), "d", 1, 0);
    let message = load_err(&spec, RGB32);
    assert!(message.contains("train/ has classes [a, b, c] but test/ has [a, b, c, d]"), "{message}");
}

#[test]
fn folder_errors_name_the_place() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = DatasetSpec::Folder(tmp.path().into());
    let message = load_err(&spec, RGB32);
    assert!(message.contains(&tmp.path().display().to_string()) && message.contains("no class folders"), "{message}");

    write_class(tmp.path(), "ok", 2, 10);
    let broken = tmp.path().join("ok").join("broken.png");
    fs::write(&broken, "this is not a PNG").unwrap();
    let message = load_err(&spec, RGB32);
    assert!(message.contains(&format!("{}: cannot decode image", broken.display())), "{message}");
}
