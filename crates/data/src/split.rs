//! Images and labels of one split, in the network's input shape.

use std::fmt;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;

use crate::convert::convert_into;

/// A network input: channels × height × width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        ImageShape { channels, height, width }
    }

    /// Values in one image (C·H·W).
    pub const fn size(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Values in one channel plane (H·W).
    pub(crate) const fn plane(&self) -> usize {
        self.height * self.width
    }
}

impl fmt::Display for ImageShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// Images (N×C×H×W u8, CHW per image) and their labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub shape: ImageShape,
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

/// Per-channel mean and standard deviation of pixels scaled to [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// Floor of a channel's std (one grey level), so a constant channel still
/// normalises to finite values.
const MIN_STD: f64 = 1.0 / 255.0;

impl Split {
    pub(crate) fn empty(shape: ImageShape) -> Self {
        Split { shape, images: Vec::new(), labels: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of image `i`, CHW.
    pub fn image(&self, i: usize) -> &[u8] {
        let size = self.shape.size();
        &self.images[i * size..(i + 1) * size]
    }

    /// Moves `count` images (all if fewer), chosen by `seed`, into a second
    /// split; returns `(rest, held_out)`, both in the original order. The
    /// choice is stratified: each class gives (within one image) its share.
    pub fn split_off(self, count: usize, seed: u64) -> (Split, Split) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut SmallRng::seed_from_u64(seed));
        // Key each image by its relative rank within its class: sorting by
        // the key interleaves the classes, so every prefix is proportional.
        let totals = self.class_counts(256);
        let mut seen = vec![0usize; 256];
        let mut keyed: Vec<(f64, usize)> = order
            .into_iter()
            .map(|i| {
                let class = usize::from(self.labels[i]);
                seen[class] += 1;
                ((seen[class] as f64 - 0.5) / totals[class] as f64, i)
            })
            .collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (held, rest) = keyed.split_at(count.min(keyed.len()));
        let select = |part: &[(f64, usize)]| {
            let mut indices: Vec<usize> = part.iter().map(|&(_, i)| i).collect();
            indices.sort_unstable();
            self.select(&indices)
        };
        (select(rest), select(held))
    }

    /// The first `n` images (all if fewer).
    pub fn take(mut self, n: usize) -> Split {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.images.truncate(n * self.shape.size());
        self
    }

    /// Images per label `0..classes`; labels outside are not counted.
    pub fn class_counts(&self, classes: usize) -> Vec<usize> {
        let mut counts = vec![0; classes];
        for &label in &self.labels {
            if let Some(count) = counts.get_mut(usize::from(label)) {
                *count += 1;
            }
        }
        counts
    }

    /// Per-channel statistics for normalising inputs; an empty split gives
    /// mean 0 and the minimum std.
    pub fn normalization(&self) -> Normalization {
        let channels = self.shape.channels;
        // Exact integer sums of values and squares, per channel.
        let mut sums = vec![(0u64, 0u64); channels];
        for (i, plane) in self.images.chunks_exact(self.shape.plane()).enumerate() {
            let (sum, squares) = &mut sums[i % channels];
            for &p in plane {
                *sum += u64::from(p);
                *squares += u64::from(p) * u64::from(p);
            }
        }
        let n = (self.len() * self.shape.plane()).max(1) as f64;
        let (mean, std) = sums
            .into_iter()
            .map(|(sum, squares)| {
                let mean = sum as f64 / n;
                let var = (squares as f64 / n - mean * mean).max(0.0);
                ((mean / 255.0) as f32, (var.sqrt() / 255.0).max(MIN_STD) as f32)
            })
            .unzip();
        Normalization { mean, std }
    }

    pub(crate) fn push(&mut self, image: &[u8], label: u8) {
        debug_assert_eq!(image.len(), self.shape.size());
        self.images.extend_from_slice(image);
        self.labels.push(label);
    }

    fn select(&self, indices: &[usize]) -> Split {
        let mut split = Split::empty(self.shape);
        for &i in indices {
            split.push(self.image(i), self.labels[i]);
        }
        split
    }

    /// The same images converted to `shape` (no copy when it already is).
    pub(crate) fn convert(self, shape: ImageShape) -> Split {
        if self.shape == shape {
            return self;
        }
        let mut images = Vec::with_capacity(self.len() * shape.size());
        for i in 0..self.len() {
            convert_into(self.image(i), self.shape, shape, &mut images);
        }
        Split { shape, images, labels: self.labels }
    }
}
