//! Splits and the batch loader, on small hand-made splits.

use std::collections::HashSet;
use std::sync::Arc;

use edgeloop_data::{Batch, BatchLoader, ImageShape, LoaderConfig, Normalization, Split};

/// `n` 1×1×1 images whose pixel is the index and label the index mod `classes`.
fn indexed(n: u8, classes: u8) -> Split {
    Split { shape: ImageShape::new(1, 1, 1), images: (0..n).collect(), labels: (0..n).map(|i| i % classes).collect() }
}

fn identity(channels: usize) -> Normalization {
    Normalization { mean: vec![0.0; channels], std: vec![1.0; channels] }
}

fn config(batch_size: usize, shuffle_seed: Option<u64>) -> LoaderConfig {
    LoaderConfig { batch_size, shuffle_seed, augment: false, drop_last: false, prefetch: 2 }
}

/// Image indices of every batch (each image's pixel is its index).
fn epoch(split: &Arc<Split>, config: LoaderConfig) -> Vec<Vec<u8>> {
    let loader = BatchLoader::new(split.clone(), identity(1), config);
    loader.map(|batch| batch.images.iter().map(|&x| (x * 255.0).round() as u8).collect()).collect()
}

#[test]
fn split_off_is_deterministic_disjoint_and_stratified() {
    let split = indexed(100, 4);
    let (rest, held) = split.clone().split_off(20, 9);
    assert_eq!((rest.len(), held.len()), (80, 20));
    assert_eq!(held.class_counts(4), vec![5; 4]);
    let all: HashSet<u8> = rest.images.iter().chain(&held.images).copied().collect();
    assert_eq!(all.len(), 100);
    assert!(held.images.windows(2).all(|w| w[0] < w[1]), "original order kept");
    assert!(held.images.iter().zip(&held.labels).all(|(&i, &label)| label == i % 4), "labels travel with images");
    assert_eq!(split.clone().split_off(20, 9), (rest, held.clone()));
    assert_ne!(split.clone().split_off(20, 10).1, held);
    let (rest, held) = split.split_off(500, 0);
    assert_eq!((rest.len(), held.len()), (0, 100));
}

#[test]
fn take_and_class_counts() {
    let split = indexed(10, 3).take(7);
    assert_eq!((split.len(), split.images, split.labels.clone()), (7, (0..7).collect(), vec![0, 1, 2, 0, 1, 2, 0]));
    let split = indexed(10, 3);
    assert_eq!(split.class_counts(3), [4, 3, 3]);
    assert_eq!(split.class_counts(2), [4, 3], "labels beyond are not counted");
    assert_eq!(indexed(4, 1).take(10).len(), 4);
    assert!(indexed(4, 1).take(0).is_empty());
}

#[test]
fn normalization_per_channel() {
    let shape = ImageShape::new(2, 2, 2);
    // Channel 0 constant 51; channel 1 half 0, half 255.
    let image = [51, 51, 51, 51, 0, 255, 0, 255];
    let split = Split { shape, images: [image, image].concat(), labels: vec![0, 0] };
    let norm = split.normalization();
    assert_eq!(norm.mean, [0.2, 0.5]);
    assert_eq!(norm.std, [1.0 / 255.0, 0.5], "a constant channel gets the floor std");
    assert_eq!(split.image(1), image);
}

#[test]
fn batch_counts() {
    assert_eq!(BatchLoader::batches(10, 4, false), 3);
    assert_eq!(BatchLoader::batches(10, 4, true), 2);
    assert_eq!(BatchLoader::batches(8, 4, true), 2);
    assert_eq!(BatchLoader::batches(0, 4, false), 0);
    let split = Arc::new(indexed(10, 10));
    let sizes = |drop_last| {
        let loader = BatchLoader::new(split.clone(), identity(1), LoaderConfig { drop_last, ..config(4, Some(1)) });
        loader.map(|batch| (batch.size, batch.labels.len(), batch.images.len())).collect::<Vec<_>>()
    };
    assert_eq!(sizes(false), [(4, 4, 4), (4, 4, 4), (2, 2, 2)]);
    assert_eq!(sizes(true), [(4, 4, 4), (4, 4, 4)]);
}

#[test]
fn order_in_sequence_or_by_seed() {
    let split = Arc::new(indexed(50, 5));
    let in_order = epoch(&split, config(8, None));
    assert_eq!(in_order.concat(), (0..50).collect::<Vec<u8>>());
    let shuffled = epoch(&split, config(8, Some(3)));
    assert_ne!(shuffled.concat(), in_order.concat());
    let mut seen = shuffled.concat();
    seen.sort_unstable();
    assert_eq!(seen, (0..50).collect::<Vec<u8>>(), "every image once");
    assert_eq!(epoch(&split, config(8, Some(3))), shuffled);
    assert_ne!(epoch(&split, config(8, Some(4))), shuffled);
}

#[test]
fn batches_are_normalised_with_matching_labels() {
    let split = Arc::new(indexed(6, 3));
    let norm = Normalization { mean: vec![0.5], std: vec![0.25] };
    let batches: Vec<Batch> = BatchLoader::new(split, norm, config(6, Some(2))).collect();
    let batch = &batches[0];
    for (&x, &label) in batch.images.iter().zip(&batch.labels) {
        let index = ((x * 0.25 + 0.5) * 255.0).round() as i64;
        assert_eq!(label, index % 3);
    }
}

#[test]
fn augmentation_keeps_shape_and_is_deterministic() {
    let shape = ImageShape::new(3, 8, 8);
    let images: Vec<u8> = (0..4 * shape.size()).map(|i| (i % 251) as u8 + 1).collect();
    let split = Arc::new(Split { shape, images, labels: vec![0, 1, 2, 3] });
    let run = |seed| {
        let config = LoaderConfig { augment: true, ..config(4, Some(seed)) };
        BatchLoader::new(split.clone(), identity(3), config).collect::<Vec<Batch>>()
    };
    let batches = run(5);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].images.len(), 4 * shape.size());
    assert_eq!(run(5), batches);
    let plain = BatchLoader::new(split.clone(), identity(3), config(4, Some(5))).next().unwrap();
    assert_eq!(plain.labels, batches[0].labels, "augmentation does not change the order");
    assert_ne!(plain.images, batches[0].images);
    // Pixels are the image's own (a shifted, maybe mirrored copy) or zero padding.
    let values: HashSet<u8> = split.images.iter().copied().chain([0]).collect();
    assert!(batches[0].images.iter().all(|&x| values.contains(&((x * 255.0).round() as u8))));
}

#[test]
fn dropping_mid_epoch_returns() {
    let split = Arc::new(indexed(200, 10));
    let mut loader = BatchLoader::new(split, identity(1), LoaderConfig { prefetch: 1, ..config(1, Some(0)) });
    assert_eq!(loader.next().unwrap().size, 1);
    drop(loader);
}
