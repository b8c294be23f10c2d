//! Conversion of one image to the network's input shape. Every loader goes
//! through here, so all datasets follow the same channel and resize rules.

use std::borrow::Cow;

use image::imageops::{self, FilterType};
use image::{ImageBuffer, Luma};

use crate::ImageShape;

/// Grey level of an RGB pixel (ITU-R BT.601 weights, the usual dataset rule).
pub(crate) fn luma([r, g, b]: [u8; 3]) -> f32 {
    0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b)
}

/// Appends `pixels` (CHW in shape `from`) converted to `to` onto `out`: grey
/// to RGB replicates the channel, RGB to grey takes the luma, a different
/// size is resized (triangle filter). Channels are reduced before resizing
/// and replicated after it, so the resize touches as few planes as possible.
pub(crate) fn convert_into(pixels: &[u8], from: ImageShape, to: ImageShape, out: &mut Vec<u8>) {
    debug_assert_eq!(pixels.len(), from.size());
    debug_assert!(matches!((from.channels, to.channels), (1 | 3, 1 | 3)));
    let planes = match (from.channels, to.channels) {
        (3, 1) => Cow::Owned(grey(pixels, from.plane())),
        _ => Cow::Borrowed(pixels),
    };
    let start = out.len();
    for plane in planes.chunks_exact(from.plane()) {
        resize_into(plane, from, to, out);
    }
    if from.channels == 1 && to.channels == 3 {
        let grey = start..start + to.plane();
        out.extend_from_within(grey.clone());
        out.extend_from_within(grey);
    }
}

fn grey(rgb: &[u8], plane: usize) -> Vec<u8> {
    let (r, rest) = rgb.split_at(plane);
    let (g, b) = rest.split_at(plane);
    (0..plane).map(|i| luma([r[i], g[i], b[i]]).round() as u8).collect()
}

fn resize_into(plane: &[u8], from: ImageShape, to: ImageShape, out: &mut Vec<u8>) {
    if (from.height, from.width) == (to.height, to.width) {
        out.extend_from_slice(plane);
        return;
    }
    let source = ImageBuffer::<Luma<u8>, _>::from_raw(from.width as u32, from.height as u32, plane)
        .expect("plane holds height × width pixels");
    let resized = imageops::resize(&source, to.width as u32, to.height as u32, FilterType::Triangle);
    out.extend_from_slice(resized.as_raw());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(pixels: &[u8], from: ImageShape, to: ImageShape) -> Vec<u8> {
        let mut out = vec![7];
        convert_into(pixels, from, to, &mut out);
        assert_eq!(out.remove(0), 7, "appends after what is there");
        assert_eq!(out.len(), to.size());
        out
    }

    #[test]
    fn same_shape_is_a_copy() {
        let shape = ImageShape::new(3, 2, 2);
        let pixels: Vec<u8> = (0..12).collect();
        assert_eq!(convert(&pixels, shape, shape), pixels);
    }

    #[test]
    fn grey_to_rgb_replicates() {
        let pixels = [10, 20, 30, 40];
        let out = convert(&pixels, ImageShape::new(1, 2, 2), ImageShape::new(3, 2, 2));
        assert_eq!(out, [pixels, pixels, pixels].concat());
    }

    #[test]
    fn rgb_to_grey_takes_luma() {
        // Two pixels: pure red and white.
        let pixels = [255, 255, 0, 255, 0, 255];
        let out = convert(&pixels, ImageShape::new(3, 1, 2), ImageShape::new(1, 1, 2));
        assert_eq!(out, [76, 255]);
    }

    #[test]
    fn resizes_each_plane() {
        let from = ImageShape::new(3, 4, 4);
        let pixels: Vec<u8> = [50u8, 100, 150].iter().flat_map(|&v| [v; 16]).collect();
        let out = convert(&pixels, from, ImageShape::new(3, 8, 6));
        assert_eq!(out, [50u8, 100, 150].iter().flat_map(|&v| [v; 48]).collect::<Vec<_>>());
        let out = convert(&pixels, from, ImageShape::new(1, 2, 2));
        assert_eq!(out, [luma([50, 100, 150]).round() as u8; 4]);
    }
}
