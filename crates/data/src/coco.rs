//! COCO JSON datasets: `annotations/instances_<split>.json` (or `annotations/<split>.json`)
//! with images under `images/<split>/` (or `<split>/`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::dataset::{Dataset, Label, Sample};
use super::{DataError, io};

/// Largest annotation file read (COCO 2017's whole train set is 448 MiB).
const MAX_ANNOTATION_BYTES: usize = 512 << 20;

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
    width: f64,
    height: f64,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    #[serde(default)]
    id: Option<u64>,
    image_id: u64,
    category_id: u64,
    bbox: [f64; 4],
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Deserialize)]
struct CocoCategory {
    id: u64,
    name: String,
}

/// The annotation files of a COCO dataset by split, if `root` is one.
pub(crate) fn annotation_files(root: &Path) -> Vec<(String, PathBuf)> {
    ["train", "val", "test"]
        .iter()
        .filter_map(|&split| {
            [format!("instances_{split}.json"), format!("{split}.json")]
                .into_iter()
                .map(|name| root.join("annotations").join(name))
                .find(|p| p.is_file())
                .map(|p| (split.to_string(), p))
        })
        .collect()
}

/// Reads a COCO dataset. Categories become classes in id order; crowd regions
/// (`iscrowd=1`) go to [`Sample::crowd`], which training skips and evaluation
/// ignores the COCO way; every problem is collected as
/// `file: annotation N: what is wrong`.
pub fn load(root: &Path) -> Result<Dataset, DataError> {
    let files = annotation_files(root);
    if files.is_empty() {
        return Err(DataError::Layout(format!(
            "{} has no annotations/instances_<split>.json",
            root.display()
        )));
    }
    let mut names: Option<Vec<String>> = None;
    let mut splits = BTreeMap::new();
    let mut issues = Vec::new();
    for (split, file) in files {
        let display = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let text =
            super::dataset::read_bounded(&file, MAX_ANNOTATION_BYTES).map_err(io("read", &file))?;
        if text.len() > MAX_ANNOTATION_BYTES {
            return Err(DataError::Layout(format!(
                "{display}: larger than {MAX_ANNOTATION_BYTES} bytes; split the dataset into smaller archives"
            )));
        }
        let coco: CocoFile = serde_json::from_str(&text)
            .map_err(|e| DataError::Layout(format!("{display}: not COCO JSON: {e}")))?;
        let mut categories: Vec<&CocoCategory> = coco.categories.iter().collect();
        categories.sort_by_key(|c| c.id);
        let these: Vec<String> = categories.iter().map(|c| c.name.clone()).collect();
        match &names {
            Some(n) if *n != these => {
                return Err(DataError::Layout(format!(
                    "{display}: categories differ from the other splits'"
                )));
            }
            _ => names = Some(these),
        }
        let class_of: HashMap<u64, usize> = categories
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id, i))
            .collect();
        let images_dir = [
            root.join("images").join(&split),
            root.join(&split),
            root.join("images"),
        ]
        .into_iter()
        .find(|d| d.is_dir())
        .unwrap_or_else(|| root.join("images").join(&split));
        let index: HashMap<u64, usize> = coco
            .images
            .iter()
            .enumerate()
            .map(|(i, im)| (im.id, i))
            .collect();
        let mut samples: Vec<Sample> = coco
            .images
            .iter()
            .map(|im| Sample {
                image: images_dir.join(&im.file_name),
                labels: Vec::new(),
                crowd: Vec::new(),
            })
            .collect();
        for (k, a) in coco.annotations.iter().enumerate() {
            let label = a.id.map_or_else(|| format!("#{k}"), |id| id.to_string());
            let Some(&i) = index.get(&a.image_id) else {
                issues.push(format!(
                    "{display}: annotation {label}: image_id {} is not in images",
                    a.image_id
                ));
                continue;
            };
            let Some(&class) = class_of.get(&a.category_id) else {
                issues.push(format!(
                    "{display}: annotation {label}: category_id {} is not in categories",
                    a.category_id
                ));
                continue;
            };
            let im = &coco.images[i];
            let [x, y, w, h] = a.bbox;
            let inside = w > 0.0
                && h > 0.0
                && x >= -0.5
                && y >= -0.5
                && x + w <= im.width + 0.5
                && y + h <= im.height + 0.5;
            if !inside || im.width <= 0.0 || im.height <= 0.0 {
                issues.push(format!(
                    "{display}: annotation {label}: bbox {:?} is empty or outside its {}x{} image",
                    a.bbox, im.width, im.height
                ));
                continue;
            }
            let sample = &mut samples[i];
            let list = if a.iscrowd != 0 {
                &mut sample.crowd
            } else {
                &mut sample.labels
            };
            list.push(Label {
                class,
                cx: ((x + w / 2.0) / im.width) as f32,
                cy: ((y + h / 2.0) / im.height) as f32,
                w: (w / im.width) as f32,
                h: (h / im.height) as f32,
            });
        }
        for s in &samples {
            if !s.image.is_file() {
                issues.push(format!(
                    "{display}: image {} does not exist",
                    s.image.display()
                ));
            }
        }
        samples.sort_by(|a, b| a.image.cmp(&b.image));
        splits.insert(split, samples);
    }
    if !issues.is_empty() {
        return Err(DataError::Labels(issues));
    }
    Ok(Dataset {
        root: root.to_path_buf(),
        names: names.unwrap_or_default(),
        splits,
    })
}
