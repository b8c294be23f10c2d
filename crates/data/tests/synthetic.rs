use std::collections::HashSet;

use edgeloop_data::{Dataset, DatasetSpec, ImageShape};

const RGB32: ImageShape = ImageShape::new(3, 32, 32);

fn synthetic(train: usize, test: usize, shape: ImageShape, seed: u64) -> Dataset {
    DatasetSpec::Synthetic { train, test }.load(shape, seed).unwrap()
}

#[test]
fn deterministic_by_seed() {
    let a = synthetic(200, 50, RGB32, 7);
    let b = synthetic(200, 50, RGB32, 7);
    assert_eq!((&a.train, &a.test), (&b.train, &b.test));
    let c = synthetic(200, 50, RGB32, 8);
    assert_ne!(a.train.images, c.train.images);
    assert_ne!(a.test.images, c.test.images);
}

#[test]
fn sizes_names_and_balance() {
    let data = synthetic(2000, 500, RGB32, 1);
    assert_eq!((data.name.as_str(), data.classes, data.class_names.len()), ("synthetic", 10, 10));
    assert_eq!(data.class_names[0], "circle");
    assert_eq!((data.train.len(), data.test.len()), (2000, 500));
    assert_eq!(data.train.images.len(), 2000 * 3 * 32 * 32);
    assert_eq!(data.train.class_counts(10), vec![200; 10]);
    assert_eq!(data.test.class_counts(10), vec![50; 10]);
    // Shuffled, not in label order.
    assert_ne!(&data.train.labels[..10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
}

#[test]
fn test_split_is_not_train() {
    let data = synthetic(500, 500, RGB32, 3);
    let train: HashSet<&[u8]> = (0..data.train.len()).map(|i| data.train.image(i)).collect();
    assert!((0..data.test.len()).all(|i| !train.contains(data.test.image(i))));
}

#[test]
fn colour_alone_does_not_tell_the_class() {
    // 600 images per class: sampling noise of a class mean is about 2.5 grey levels.
    let data = synthetic(6000, 0, RGB32, 11);
    let mut sums = [[0f64; 3]; 10];
    for i in 0..data.train.len() {
        for (c, plane) in data.train.image(i).chunks_exact(32 * 32).enumerate() {
            sums[usize::from(data.train.labels[i])][c] += plane.iter().map(|&p| f64::from(p)).sum::<f64>() / 1024.0;
        }
    }
    for c in 0..3 {
        let means: Vec<f64> = sums.iter().map(|s| s[c] / 600.0).collect();
        let (lo, hi) = means.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &m| (lo.min(m), hi.max(m)));
        assert!(hi - lo < 16.0, "channel {c}: per-class means {means:.1?}");
    }
}

#[test]
fn converts_to_the_requested_shape() {
    let grey = synthetic(20, 10, ImageShape::new(1, 28, 28), 5);
    assert_eq!((grey.train.shape, grey.train.images.len()), (ImageShape::new(1, 28, 28), 20 * 28 * 28));
    assert_eq!(grey.test.images.len(), 10 * 28 * 28);
    let rgb = synthetic(20, 10, RGB32, 5);
    assert_eq!(grey.train.labels, rgb.train.labels);
}
