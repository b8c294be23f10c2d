//! Procedural shapes and textures: a dataset that needs no download yet
//! takes spatial features to classify. Each image is one figure at a random
//! position and scale, in random colours over a random background, plus
//! per-pixel noise; colours are drawn independently of the class, so colour
//! alone says nothing about it.

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};

use crate::convert::luma;
use crate::{Dataset, ImageShape, Split};

pub(crate) const CLASS_NAMES: [&str; 10] = [
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal-stripes",
    "vertical-stripes",
    "diagonal-stripes",
    "checkerboard",
    "dots",
];

/// Rotation range of each class's figure (±degrees), up to its symmetry;
/// stripes stay recognisably horizontal, vertical or diagonal.
const MAX_ANGLE: [f32; 10] = [0.0, 45.0, 180.0, 45.0, 0.0, 20.0, 20.0, 20.0, 45.0, 0.0];

/// The one class drawn from a list of points rather than a formula.
const DOTS: u8 = 9;

/// Images are drawn at this shape and then converted like any dataset's.
const NATIVE: ImageShape = ImageShape::new(3, 32, 32);

/// Minimum luma difference between figure and background, so the figure
/// stays visible in grey as well as in colour.
const MIN_CONTRAST: f32 = 40.0;

pub(crate) fn generate(train: usize, test: usize, shape: ImageShape, seed: u64) -> Dataset {
    // Separate streams, so the test images are not a replay of the train ones.
    let mut streams = SmallRng::seed_from_u64(seed);
    let train_rng = SmallRng::from_rng(&mut streams);
    let test_rng = SmallRng::from_rng(&mut streams);
    let class_names = CLASS_NAMES.iter().map(ToString::to_string).collect();
    Dataset::new("synthetic", class_names, split(train, train_rng).convert(shape), split(test, test_rng).convert(shape))
}

/// `n` images with balanced, shuffled labels.
fn split(n: usize, mut rng: SmallRng) -> Split {
    let mut labels: Vec<u8> = (0..n).map(|i| (i % CLASS_NAMES.len()) as u8).collect();
    labels.shuffle(&mut rng);
    let mut images = vec![0; n * NATIVE.size()];
    for (image, &label) in images.chunks_exact_mut(NATIVE.size()).zip(&labels) {
        draw(image, label, &mut rng);
    }
    Split { shape: NATIVE, images, labels }
}

/// The geometry of one image's figure.
struct Figure {
    class: u8,
    cx: f32,
    cy: f32,
    /// Cosine and sine of the rotation.
    cos: f32,
    sin: f32,
    /// Half the figure's extent, in pixels.
    size: f32,
    /// Width of a stripe or checker (textures).
    period: f32,
    phase: f32,
    dots: Vec<(f32, f32)>,
}

impl Figure {
    fn random(class: u8, rng: &mut SmallRng) -> Self {
        let size = rng.random_range(5.0..12.0);
        let margin = 0.7 * size;
        let extent = NATIVE.width as f32;
        let (cx, cy) = (rng.random_range(margin..extent - margin), rng.random_range(margin..extent - margin));
        let max_angle = MAX_ANGLE[usize::from(class)].to_radians();
        let (sin, cos) = if max_angle > 0.0 { rng.random_range(-max_angle..max_angle).sin_cos() } else { (0.0, 1.0) };
        let period = rng.random_range(2.0..4.0);
        let phase = rng.random_range(0.0..2.0 * period);
        let dots = if class == DOTS {
            let n = rng.random_range(6..12);
            (0..n).map(|_| (cx + rng.random_range(-size..size), cy + rng.random_range(-size..size))).collect()
        } else {
            Vec::new()
        };
        Figure { class, cx, cy, cos, sin, size, period, phase, dots }
    }

    /// Whether the pixel centred at (x, y) belongs to the figure.
    fn contains(&self, x: f32, y: f32) -> bool {
        // (u, v): the pixel in the figure's rotated frame.
        let (dx, dy, s) = (x - self.cx, y - self.cy, self.size);
        let (u, v) = (dx * self.cos + dy * self.sin, dy * self.cos - dx * self.sin);
        let r2 = u * u + v * v;
        // Textures fill the figure's square; `band` alternates every period.
        let in_square = u.abs() <= s && v.abs() <= s;
        let band = |t: f32| ((t + self.phase) / self.period).floor().rem_euclid(2.0) == 0.0;
        match self.class {
            0 => r2 <= s * s,
            1 => u.abs() <= 0.8 * s && v.abs() <= 0.8 * s,
            2 => v.abs() <= 0.9 * s && u.abs() <= (v + 0.9 * s) * 0.6,
            3 => {
                let t = 0.3 * s;
                (u.abs() <= t && v.abs() <= s) || (v.abs() <= t && u.abs() <= s)
            }
            4 => r2 <= s * s && r2 >= 0.3 * s * s,
            5 => in_square && band(v),
            6 => in_square && band(u),
            7 => in_square && band((u + v) * std::f32::consts::FRAC_1_SQRT_2),
            8 => in_square && band(u) != band(v),
            _ => self.dots.iter().any(|&(px, py)| (x - px).powi(2) + (y - py).powi(2) <= 2.0), // DOTS
        }
    }
}

fn draw(image: &mut [u8], class: u8, rng: &mut SmallRng) {
    let (fg, bg) = colours(rng);
    let figure = Figure::random(class, rng);
    let plane = NATIVE.plane();
    for y in 0..NATIVE.height {
        for x in 0..NATIVE.width {
            let colour = if figure.contains(x as f32 + 0.5, y as f32 + 0.5) { fg } else { bg };
            for (c, &value) in colour.iter().enumerate() {
                image[c * plane + y * NATIVE.width + x] = (i32::from(value) + noise(rng)).clamp(0, 255) as u8;
            }
        }
    }
}

/// Figure and background colours. Both are redrawn until they contrast, so
/// the pair is exchangeable and each has the same distribution: a class's
/// mean colour does not depend on how much of the image its figure covers.
fn colours(rng: &mut SmallRng) -> ([u8; 3], [u8; 3]) {
    loop {
        let (a, b): ([u8; 3], [u8; 3]) = (rng.random(), rng.random());
        if (luma(a) - luma(b)).abs() >= MIN_CONTRAST {
            return (a, b);
        }
    }
}

/// Roughly Gaussian noise (sum of four uniform bytes), standard deviation ≈ 21.
fn noise(rng: &mut SmallRng) -> i32 {
    let sum: i32 = rng.next_u32().to_le_bytes().iter().map(|&b| i32::from(b)).sum();
    (sum - 510) / 7
}
