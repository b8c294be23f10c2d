//! Batches for training and evaluation, prepared ahead in a background
//! thread so that gathering, augmentation and normalisation overlap with the
//! GPU's work.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::{Normalization, Split};

/// Zero padding of the random crop, in pixels (the CIFAR recipe).
const CROP_PADDING: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Seed of the epoch's order and augmentation; `None` keeps the split's
    /// order (and augments, if asked, with seed 0).
    pub shuffle_seed: Option<u64>,
    /// Random crop (zero padding 4) and horizontal flip per image.
    pub augment: bool,
    /// Skip a last, smaller batch.
    pub drop_last: bool,
    /// Batches buffered ahead of the consumer.
    pub prefetch: usize,
}

/// Images `size`×C×H×W, normalised as `(x/255 − mean)/std` per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub size: usize,
}

/// One epoch over a split, as an iterator of batches.
pub struct BatchLoader {
    receiver: Option<Receiver<Batch>>,
    worker: Option<JoinHandle<()>>,
}

impl BatchLoader {
    /// Starts preparing batches. Panics if `batch_size` is 0 or `norm` does
    /// not have one value per channel.
    pub fn new(split: Arc<Split>, norm: Normalization, config: LoaderConfig) -> Self {
        assert!(config.batch_size > 0, "batch size must be positive");
        let channels = split.shape.channels;
        assert!(
            norm.mean.len() == channels && norm.std.len() == channels,
            "normalization must have {channels} channels"
        );
        let (sender, receiver) = sync_channel(config.prefetch);
        let worker = std::thread::spawn(move || produce(&split, &norm, &config, &sender));
        BatchLoader { receiver: Some(receiver), worker: Some(worker) }
    }

    /// Number of batches in an epoch over `len` images.
    pub fn batches(len: usize, batch_size: usize, drop_last: bool) -> usize {
        if drop_last { len / batch_size } else { len.div_ceil(batch_size) }
    }
}

impl Iterator for BatchLoader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let batch = self.receiver.as_ref()?.recv().ok();
        if batch.is_none() {
            // The epoch is over, or the worker panicked: say so rather than
            // end the epoch early.
            self.receiver = None;
            if let Some(Err(panic)) = self.worker.take().map(JoinHandle::join) {
                std::panic::resume_unwind(panic);
            }
        }
        batch
    }
}

impl Drop for BatchLoader {
    /// Dropping the receiver makes the worker's next send fail, so it ends
    /// promptly even mid-epoch.
    fn drop(&mut self) {
        self.receiver.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn produce(split: &Split, norm: &Normalization, config: &LoaderConfig, sender: &SyncSender<Batch>) {
    let mut order: Vec<usize> = (0..split.len()).collect();
    let mut rng = SmallRng::seed_from_u64(config.shuffle_seed.unwrap_or(0));
    if config.shuffle_seed.is_some() {
        order.shuffle(&mut rng);
    }
    let batches = BatchLoader::batches(order.len(), config.batch_size, config.drop_last);
    // Per channel, (x/255 − mean)/std as one multiply-add.
    let scale: Vec<f32> = norm.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let offset: Vec<f32> = norm.mean.iter().zip(&norm.std).map(|(m, s)| -m / s).collect();
    for indices in order.chunks(config.batch_size).take(batches) {
        let mut images = Vec::with_capacity(indices.len() * split.shape.size());
        for &i in indices {
            let view = if config.augment { View::random(&mut rng) } else { View::IDENTITY };
            view.write(split, i, &scale, &offset, &mut images);
        }
        let labels = indices.iter().map(|&i| i64::from(split.labels[i])).collect();
        if sender.send(Batch { images, labels, size: indices.len() }).is_err() {
            return;
        }
    }
}

/// How an image is seen: the window at (left, top) of the image padded by
/// `CROP_PADDING` zeros on each side, possibly mirrored.
struct View {
    left: usize,
    top: usize,
    flip: bool,
}

impl View {
    const IDENTITY: View = View { left: CROP_PADDING, top: CROP_PADDING, flip: false };

    fn random(rng: &mut SmallRng) -> Self {
        let offset = 0..=2 * CROP_PADDING;
        View { left: rng.random_range(offset.clone()), top: rng.random_range(offset), flip: rng.random() }
    }

    /// Appends image `i` of `split`, seen this way and normalised.
    fn write(&self, split: &Split, i: usize, scale: &[f32], offset: &[f32], out: &mut Vec<f32>) {
        let (width, height) = (split.shape.width, split.shape.height);
        // Source coordinate in the unpadded image, if inside it.
        let source = |padded: usize, extent: usize| padded.checked_sub(CROP_PADDING).filter(|&p| p < extent);
        for (c, plane) in split.image(i).chunks_exact(split.shape.plane()).enumerate() {
            for y in 0..height {
                for x in 0..width {
                    let x = if self.flip { width - 1 - x } else { x };
                    let pixel = match (source(x + self.left, width), source(y + self.top, height)) {
                        (Some(sx), Some(sy)) => plane[sy * width + sx],
                        _ => 0,
                    };
                    out.push(f32::from(pixel) * scale[c] + offset[c]);
                }
            }
        }
    }
}
