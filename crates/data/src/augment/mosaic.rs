//! Mosaic: four images around a random centre on a canvas twice the input size, as in
//! Ultralytics' `Mosaic` (its 2 × 2 layout); the random affine then crops it to size.

use image::imageops::{FilterType, resize};
use image::{Rgb, RgbImage};

use super::Labelled;

/// An image resized for a mosaic: its longer side equals the input size.
#[derive(Debug, Clone)]
pub struct Tile(Labelled);

impl Tile {
    /// Resizes `l` so that its longer side is `size`, as Ultralytics loads training images.
    pub fn fit(l: Labelled, size: u32) -> Self {
        let (w, h) = l.image.dimensions();
        let r = size as f64 / w.max(h) as f64;
        if (r - 1.0).abs() < 1e-12 {
            return Self(l);
        }
        let nw = ((w as f64 * r).ceil() as u32).clamp(1, size);
        let nh = ((h as f64 * r).ceil() as u32).clamp(1, size);
        let (kx, ky) = (nw as f64 / w as f64, nh as f64 / h as f64);
        let boxes = l
            .boxes
            .iter()
            .map(|&(c, b)| (c, [b[0] * kx, b[1] * ky, b[2] * kx, b[3] * ky]))
            .collect();
        Self(Labelled {
            image: resize(&l.image, nw, nh, FilterType::Triangle),
            boxes,
        })
    }
}

/// Places four tiles on a `2·size` square canvas (grey elsewhere), meeting at `centre`
/// (x, y): the first to its top left, then top right, bottom left, bottom right. Boxes
/// are moved with their tile and clipped to the canvas.
pub fn mosaic(tiles: [Tile; 4], size: u32, centre: [f64; 2]) -> Labelled {
    let s2 = 2 * size as i64;
    let (xc, yc) = (centre[0] as i64, centre[1] as i64);
    let mut image = RgbImage::from_pixel(s2 as u32, s2 as u32, Rgb([114, 114, 114]));
    let mut boxes = Vec::new();
    for (i, Tile(tile)) in tiles.into_iter().enumerate() {
        let (w, h) = (tile.image.width() as i64, tile.image.height() as i64);
        // Canvas corners (a) and tile corners (b) as in Ultralytics' `_mosaic4`.
        let (x1a, y1a, x2a, y2a) = match i {
            0 => ((xc - w).max(0), (yc - h).max(0), xc, yc),
            1 => (xc, (yc - h).max(0), (xc + w).min(s2), yc),
            2 => ((xc - w).max(0), yc, xc, (yc + h).min(s2)),
            _ => (xc, yc, (xc + w).min(s2), (yc + h).min(s2)),
        };
        let (x1b, y1b) = match i {
            0 => (w - (x2a - x1a), h - (y2a - y1a)),
            1 => (0, h - (y2a - y1a)),
            2 => (w - (x2a - x1a), 0),
            _ => (0, 0),
        };
        let (cw, ch) = ((x2a - x1a).min(w - x1b), (y2a - y1a).min(h - y1b));
        if cw > 0 && ch > 0 {
            let part = image::imageops::crop_imm(
                &tile.image,
                x1b as u32,
                y1b as u32,
                cw as u32,
                ch as u32,
            )
            .to_image();
            image::imageops::replace(&mut image, &part, x1a, y1a);
        }
        let (padw, padh) = ((x1a - x1b) as f64, (y1a - y1b) as f64);
        let edge = s2 as f64;
        for (c, b) in tile.boxes {
            let moved = [
                (b[0] + padw).clamp(0.0, edge),
                (b[1] + padh).clamp(0.0, edge),
                (b[2] + padw).clamp(0.0, edge),
                (b[3] + padh).clamp(0.0, edge),
            ];
            boxes.push((c, moved));
        }
    }
    Labelled { image, boxes }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `size` square of one colour with one box of class `class` covering its middle.
    fn tile(colour: [u8; 3], class: usize, size: u32) -> Labelled {
        let q = size as f64 / 4.0;
        Labelled {
            image: RgbImage::from_pixel(size, size, Rgb(colour)),
            boxes: vec![(class, [q, q, 3.0 * q, 3.0 * q])],
        }
    }

    #[test]
    fn four_tiles_meet_at_the_centre_with_their_boxes() {
        let colours = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]];
        let tiles = std::array::from_fn(|i| Tile::fit(tile(colours[i], i, 32), 32));
        let m = mosaic(tiles, 32, [40.0, 24.0]);
        assert_eq!(m.image.dimensions(), (64, 64));
        // Each quadrant around (40, 24) shows its tile; beyond the tiles it is grey.
        assert_eq!(m.image.get_pixel(39, 23).0, colours[0]);
        assert_eq!(m.image.get_pixel(40, 23).0, colours[1]);
        assert_eq!(m.image.get_pixel(39, 24).0, colours[2]);
        assert_eq!(m.image.get_pixel(40, 24).0, colours[3]);
        assert_eq!(m.image.get_pixel(5, 60).0, [114, 114, 114]);
        // Tile 0 ends at the centre: its box (8..24 in the tile) is shifted by (8, −8).
        assert_eq!(m.boxes[0], (0, [16.0, 0.0, 32.0, 16.0]));
        // Tile 3 starts at the centre and is cut by the canvas edge at 64.
        assert_eq!(m.boxes[3], (3, [48.0, 32.0, 64.0, 48.0]));
        for (class, b) in &m.boxes {
            let (x, y) = (((b[0] + b[2]) / 2.0) as u32, ((b[1] + b[3]) / 2.0) as u32);
            assert_eq!(m.image.get_pixel(x, y).0, colours[*class], "box {class}");
        }
    }

    #[test]
    fn tiles_are_fitted_to_the_input_size_with_their_boxes() {
        let t = Tile::fit(tile([9, 9, 9], 0, 64), 32).0;
        assert_eq!(t.image.dimensions(), (32, 32));
        assert_eq!(t.boxes, vec![(0, [8.0, 8.0, 24.0, 24.0])]);
    }
}
