//! A synthetic detection dataset: coloured shapes on textured backgrounds, in the YOLO
//! layout, the same for the same seed on every machine.

use std::path::Path;

use image::{Rgb, RgbImage};

use super::rng::SplitMix as Rng;
use super::{DataError, io};

/// Class names of the synthetic set.
pub const CLASSES: &[&str] = &["circle", "square", "triangle"];

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthOptions {
    /// Number of images (80% train, 20% val).
    pub images: usize,
    /// Seed: the same seed gives the same dataset.
    pub seed: u64,
    /// Square image size in pixels.
    pub imgsz: u32,
}

/// Writes the dataset to `out` (`data.yaml`, `images/{train,val}`, `labels/{train,val}`).
pub fn generate(out: &Path, options: SynthOptions) -> Result<(), DataError> {
    if options.images == 0 || options.imgsz < 32 {
        return Err(DataError::Layout(
            "synth needs at least 1 image of at least 32 pixels".into(),
        ));
    }
    for split in ["train", "val"] {
        for kind in ["images", "labels"] {
            let dir = out.join(kind).join(split);
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        }
    }
    let names: Vec<String> = CLASSES
        .iter()
        .enumerate()
        .map(|(i, n)| format!("  {i}: {n}"))
        .collect();
    // No `path:` key: Ultralytics then resolves the splits next to this file.
    let yaml = format!(
        "train: images/train\nval: images/val\nnames:\n{}\n",
        names.join("\n")
    );
    let yaml_path = out.join("data.yaml");
    std::fs::write(&yaml_path, yaml).map_err(io("write", &yaml_path))?;
    let val_from = options.images - (options.images / 5).max(1).min(options.images);
    for index in 0..options.images {
        // One stream per image, so images do not depend on how many came before.
        let mut rng = Rng(options.seed ^ (index as u64).wrapping_mul(0xa076_1d64_78bd_642f));
        let (img, labels) = draw(&mut rng, options.imgsz);
        let split = if index >= val_from { "val" } else { "train" };
        let stem = format!("{index:06}");
        let image_path = out.join("images").join(split).join(format!("{stem}.png"));
        img.save(&image_path).map_err(|e| DataError::Image {
            path: image_path.clone(),
            reason: e.to_string(),
        })?;
        let label_path = out.join("labels").join(split).join(format!("{stem}.txt"));
        std::fs::write(&label_path, labels).map_err(io("write", &label_path))?;
    }
    Ok(())
}

fn draw(rng: &mut Rng, size: u32) -> (RgbImage, String) {
    let s = size as f64;
    // Background: a colour gradient plus per-pixel noise and a few soft stripes.
    let base = [
        rng.range(40.0, 200.0),
        rng.range(40.0, 200.0),
        rng.range(40.0, 200.0),
    ];
    let tilt = [
        rng.range(-60.0, 60.0),
        rng.range(-60.0, 60.0),
        rng.range(-60.0, 60.0),
    ];
    let freq = rng.range(2.0, 9.0);
    let mut img = RgbImage::from_fn(size, size, |x, y| {
        let (u, v) = (x as f64 / s, y as f64 / s);
        let stripe = ((u * freq + v * freq * 0.7) * std::f64::consts::TAU).sin() * 12.0;
        let mut p = [0u8; 3];
        for c in 0..3 {
            let noise = ((x.wrapping_mul(73_856_093)
                ^ y.wrapping_mul(19_349_663)
                ^ (c as u32 * 83_492_791))
                % 31) as f64
                - 15.0;
            p[c] = (base[c] + tilt[c] * (u - v) + stripe + noise).clamp(0.0, 255.0) as u8;
        }
        Rgb(p)
    });
    let count = 1 + rng.below(5);
    let mut labels = String::new();
    for _ in 0..count {
        let class = rng.below(CLASSES.len());
        let w = rng.range(0.12, 0.45) * s;
        let h = if class == 0 {
            w
        } else {
            rng.range(0.12, 0.45) * s
        };
        let x0 = rng.range(0.0, s - w);
        let y0 = rng.range(0.0, s - h);
        let colour = loop {
            let c = [
                rng.below(256) as f64,
                rng.below(256) as f64,
                rng.below(256) as f64,
            ];
            // Keep objects distinguishable from the background.
            if (0..3).map(|i| (c[i] - base[i]).abs()).sum::<f64>() > 150.0 {
                break Rgb([c[0] as u8, c[1] as u8, c[2] as u8]);
            }
        };
        let (cx, cy) = (x0 + w / 2.0, y0 + h / 2.0);
        for y in y0 as u32..((y0 + h).ceil() as u32).min(size) {
            for x in x0 as u32..((x0 + w).ceil() as u32).min(size) {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                let inside = match class {
                    0 => ((px - cx) / (w / 2.0)).powi(2) + ((py - cy) / (h / 2.0)).powi(2) <= 1.0,
                    1 => px >= x0 && px <= x0 + w && py >= y0 && py <= y0 + h,
                    _ => {
                        // Apex at the top centre, base along the bottom.
                        let t = (py - y0) / h;
                        (0.0..=1.0).contains(&t) && (px - cx).abs() <= t * w / 2.0
                    }
                };
                if inside {
                    img.put_pixel(x, y, colour);
                }
            }
        }
        labels.push_str(&format!(
            "{class} {:.6} {:.6} {:.6} {:.6}\n",
            cx / s,
            cy / s,
            w / s,
            h / s
        ));
    }
    (img, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_images_and_another_seed_does_not() {
        let (a, la) = draw(&mut Rng(7), 64);
        let (b, lb) = draw(&mut Rng(7), 64);
        let (c, _) = draw(&mut Rng(8), 64);
        assert_eq!(a, b);
        assert_eq!(la, lb);
        assert_ne!(a, c);
        assert!(!la.is_empty());
    }
}
