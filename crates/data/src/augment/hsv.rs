//! HSV colour jitter: hue shifted, saturation and value scaled by random gains, through
//! OpenCV's 8-bit HSV (hue in 0..180) as Ultralytics' `RandomHSV` does.

use image::RgbImage;

/// Largest relative change of hue (share of the colour circle), saturation and value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HsvGains {
    /// Hue gain.
    pub h: f64,
    /// Saturation gain.
    pub s: f64,
    /// Value gain.
    pub v: f64,
}

impl Default for HsvGains {
    fn default() -> Self {
        Self {
            h: 0.015,
            s: 0.7,
            v: 0.4,
        }
    }
}

impl HsvGains {
    /// Whether any gain is set (otherwise the image is left alone).
    pub fn any(&self) -> bool {
        self.h != 0.0 || self.s != 0.0 || self.v != 0.0
    }

    /// Draws one jitter: each gain times a number in [−1, 1] (three draws).
    pub fn draw(&self, uniform: &mut impl FnMut() -> f64) -> HsvGains {
        HsvGains {
            h: (2.0 * uniform() - 1.0) * self.h,
            s: (2.0 * uniform() - 1.0) * self.s,
            v: (2.0 * uniform() - 1.0) * self.v,
        }
    }
}

/// Applies a drawn jitter `r`: hue + r.h × 180 (mod 180), saturation × (1 + r.s) and
/// value × (1 + r.v), clipped to 0..=255; pixels without saturation stay grey.
/// Like Ultralytics, it goes through 8-bit HSV even when `r` is zero (hue is kept in
/// 2° steps there).
pub fn jitter_hsv(img: &mut RgbImage, r: &HsvGains) {
    let lut = |f: &dyn Fn(f64) -> f64| -> [u8; 256] {
        std::array::from_fn(|x| f(x as f64).clamp(0.0, 255.0) as u8)
    };
    let hue = lut(&|x| (x + r.h * 180.0).rem_euclid(180.0));
    let mut sat = lut(&|x| x * (1.0 + r.s));
    sat[0] = 0;
    let val = lut(&|x| x * (1.0 + r.v));
    for p in img.pixels_mut() {
        let [h, s, v] = rgb_to_hsv(p.0);
        p.0 = hsv_to_rgb([hue[h as usize], sat[s as usize], val[v as usize]]);
    }
}

/// Fixed-point shift of OpenCV's 8-bit HSV conversion.
const SHIFT: u32 = 12;

/// OpenCV's reciprocal tables, indexed by value (for saturation) and by the channel
/// spread (for hue), made once: every training pixel goes through them.
static DIVISORS: std::sync::LazyLock<([i64; 256], [i64; 256])> = std::sync::LazyLock::new(|| {
    let table = |divide: fn(f64) -> f64| -> [i64; 256] {
        std::array::from_fn(|i| match i {
            0 => 0,
            _ => divide(i as f64).round_ties_even() as i64,
        })
    };
    (
        table(|i| (255i64 << SHIFT) as f64 / i),
        table(|i| (180i64 << SHIFT) as f64 / (6.0 * i)),
    )
});

/// OpenCV's 8-bit RGB → HSV (`cvtColor`'s integer arithmetic): hue in 0..180 (degrees
/// / 2), saturation and value 0..=255.
fn rgb_to_hsv([r, g, b]: [u8; 3]) -> [u8; 3] {
    let (sdiv, hdiv) = &*DIVISORS;
    let (r, g, b) = (r as i64, g as i64, b as i64);
    let v = r.max(g).max(b);
    let diff = v - r.min(g).min(b);
    let round = 1i64 << (SHIFT - 1);
    let s = (diff * sdiv[v as usize] + round) >> SHIFT;
    let h = if v == r {
        g - b
    } else if v == g {
        b - r + 2 * diff
    } else {
        r - g + 4 * diff
    };
    let mut h = (h * hdiv[diff as usize] + round) >> SHIFT;
    if h < 0 {
        h += 180;
    }
    [h as u8, s as u8, v as u8]
}

/// OpenCV's 8-bit HSV → RGB (single-precision arithmetic, truncated to 8 bits as its
/// vectorised path, which whole images take, does).
fn hsv_to_rgb([h, s, v]: [u8; 3]) -> [u8; 3] {
    let (s, v) = (s as f32 * (1.0 / 255.0), v as f32 * (1.0 / 255.0));
    let rgb = if s == 0.0 {
        [v, v, v]
    } else {
        let mut h = h as f32 * (6.0 / 180.0);
        while h >= 6.0 {
            h -= 6.0;
        }
        let sector = h.floor();
        let f = h - sector;
        let tab = [
            v,
            v * (1.0 - s),
            v * (1.0 - s * f),
            v * (1.0 - s * (1.0 - f)),
        ];
        // (r, g, b) as indices into `tab`, per sector.
        let pick: [usize; 3] = match sector as u8 {
            0 => [0, 3, 1],
            1 => [2, 0, 1],
            2 => [1, 0, 3],
            3 => [1, 2, 0],
            4 => [3, 1, 0],
            _ => [0, 1, 2],
        };
        pick.map(|i| tab[i])
    };
    rgb.map(|c| (c * 255.0).clamp(0.0, 255.0) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use proptest::prelude::*;

    fn one(px: [u8; 3], r: HsvGains) -> [u8; 3] {
        let mut img = RgbImage::from_pixel(1, 1, Rgb(px));
        jitter_hsv(&mut img, &r);
        img.get_pixel(0, 0).0
    }

    /// Within one level per channel: OpenCV's 8-bit conversion truncates.
    fn assert_near(got: [u8; 3], want: [u8; 3]) {
        let near = got
            .iter()
            .zip(want)
            .all(|(g, w)| (*g as i32 - w as i32).abs() <= 1);
        assert!(near, "{got:?} is not {want:?}");
    }

    const NONE: HsvGains = HsvGains {
        h: 0.0,
        s: 0.0,
        v: 0.0,
    };

    #[test]
    fn half_the_circle_turns_red_into_cyan_and_green_into_magenta() {
        let r = HsvGains { h: 0.5, ..NONE };
        assert_near(one([200, 0, 0], r), [0, 200, 200]);
        assert_near(one([0, 200, 0], r), [200, 0, 200]);
    }

    #[test]
    fn value_scales_brightness_and_saturation_moves_towards_grey() {
        let brighter = HsvGains { v: 0.4, ..NONE };
        assert_near(one([100, 50, 50], brighter), [140, 70, 70]);
        assert_near(one([250, 10, 10], brighter), [255, 10, 10]);
        let duller = HsvGains { s: -0.5, ..NONE };
        // Saturation 0.8 → 0.4 at value 200: the other channels rise to 120.
        assert_near(one([200, 40, 40], duller), [200, 120, 120]);
    }

    #[test]
    fn grey_stays_grey_under_any_hue_and_saturation_change() {
        let r = HsvGains {
            h: 0.3,
            s: 0.7,
            v: 0.0,
        };
        assert_near(one([90, 90, 90], r), [90, 90, 90]);
    }

    proptest! {
        /// Through HSV and back changes a colour by no more than the 8-bit hue step.
        #[test]
        fn the_hsv_round_trip_keeps_colours(r in 0u8.., g in 0u8.., b in 0u8..) {
            let back = hsv_to_rgb(rgb_to_hsv([r, g, b]));
            for (x, y) in [r, g, b].iter().zip(back) {
                prop_assert!((*x as i32 - y as i32).abs() <= 5, "{:?} → {:?}", [r, g, b], back);
            }
        }
    }
}
