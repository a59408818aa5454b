//! The YOLO dataset layout: `data.yaml`, `images/<split>/`, `labels/<split>/*.txt`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{DataError, io};

/// One labelled object, normalised to the image size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Label {
    /// Class id.
    pub class: usize,
    /// Centre x in [0, 1].
    pub cx: f32,
    /// Centre y in [0, 1].
    pub cy: f32,
    /// Width in (0, 1].
    pub w: f32,
    /// Height in (0, 1].
    pub h: f32,
}

impl Label {
    /// The box in pixels of an image of this size: (x1, y1, x2, y2).
    pub fn to_pixels(&self, width: u32, height: u32) -> [f64; 4] {
        let (w, h) = (width as f64, height as f64);
        let (cx, cy, bw, bh) = (
            self.cx as f64 * w,
            self.cy as f64 * h,
            self.w as f64 * w,
            self.h as f64 * h,
        );
        [cx - bw / 2.0, cy - bh / 2.0, cx + bw / 2.0, cy + bh / 2.0]
    }
}

/// An image and its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The image file.
    pub image: PathBuf,
    /// Its objects (empty for a background image).
    pub labels: Vec<Label>,
    /// Crowd regions (COCO's `iscrowd=1`): never trained on, and ignored by the
    /// evaluation (detections on them are neither right nor wrong). YOLO-format
    /// labels have none.
    pub crowd: Vec<Label>,
}

/// A detection dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The folder it was read from.
    pub root: PathBuf,
    /// Class names, indexed by class id.
    pub names: Vec<String>,
    /// Samples per split ("train", "val", …), sorted by file name.
    pub splits: BTreeMap<String, Vec<Sample>>,
}

impl Dataset {
    /// The samples of a split, or an error listing the splits there are.
    pub fn split(&self, name: &str) -> Result<&[Sample], DataError> {
        self.splits.get(name).map(Vec::as_slice).ok_or_else(|| {
            DataError::Layout(format!(
                "no split '{name}' in {} (splits: {})",
                self.root.display(),
                self.splits.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp"];

/// Reads a dataset in the YOLO layout (or, without a `data.yaml`, COCO JSON; see
/// [`super::coco`]). Every label problem in every file is collected
/// and reported together as `file:line: what is wrong`.
pub fn load(root: &Path) -> Result<Dataset, DataError> {
    let yaml_path = root.join("data.yaml");
    if !yaml_path.is_file() && !super::coco::annotation_files(root).is_empty() {
        return super::coco::load(root);
    }
    let text = read_bounded(&yaml_path, MAX_YAML_BYTES).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Layout(format!(
            "{} has no data.yaml (it names the classes: `names: [cat, dog]`)",
            root.display()
        )),
        _ => DataError::Io {
            action: "read",
            path: yaml_path.clone(),
            source: e,
        },
    })?;
    let config = parse_data_yaml(&text)
        .map_err(|e| DataError::Layout(format!("{}: {e}", yaml_path.display())))?;
    let mut splits = BTreeMap::new();
    let mut issues = Vec::new();
    for (split, images_rel) in &config.splits {
        let images_dir = root.join(images_rel);
        if !images_dir.is_dir() {
            continue;
        }
        let labels_dir = labels_dir_for(&images_dir);
        let mut samples = Vec::new();
        let mut stems = std::collections::BTreeSet::new();
        for entry in sorted_files(&images_dir)? {
            let ext = entry
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_lowercase)
                .unwrap_or_default();
            if !IMAGE_EXTENSIONS.contains(&ext.as_str()) {
                continue;
            }
            let stem = entry
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            let label_path = labels_dir.join(format!("{stem}.txt"));
            let labels = if label_path.is_file() {
                let display = label_path
                    .strip_prefix(root)
                    .unwrap_or(&label_path)
                    .display()
                    .to_string();
                let text =
                    read_bounded(&label_path, MAX_LABEL_BYTES).map_err(io("read", &label_path))?;
                if text.len() > MAX_LABEL_BYTES {
                    issues.push(format!(
                        "{display}: larger than {MAX_LABEL_BYTES} bytes; a label file lists one box a line"
                    ));
                    Vec::new()
                } else {
                    parse_labels(&text, &display, config.names.len(), &mut issues)
                }
            } else {
                Vec::new()
            };
            stems.insert(stem);
            samples.push(Sample {
                image: entry,
                labels,
                crowd: Vec::new(),
            });
        }
        if labels_dir.is_dir() {
            for label in sorted_files(&labels_dir)? {
                let stem = label
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                if label.extension().is_some_and(|e| e == "txt") && !stems.contains(stem) {
                    let display = label
                        .strip_prefix(root)
                        .unwrap_or(&label)
                        .display()
                        .to_string();
                    issues.push(format!(
                        "{display}: no image with this name in {}",
                        images_rel.display()
                    ));
                }
            }
        }
        splits.insert(split.clone(), samples);
    }
    if !issues.is_empty() {
        return Err(DataError::Labels(issues));
    }
    if splits.values().all(Vec::is_empty) {
        return Err(DataError::Layout(format!(
            "{} has no images under {}",
            root.display(),
            config
                .splits
                .iter()
                .map(|(_, p)| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    Ok(Dataset {
        root: root.to_path_buf(),
        names: config.names,
        splits,
    })
}

/// Opens a dataset from a folder, or from a .zip/.tar/.tar.gz archive unpacked (within
/// `limits`) into `scratch`. An archive may hold the dataset at its top or inside one
/// top-level folder.
pub fn open(
    path: &Path,
    scratch: &Path,
    limits: super::archive::ArchiveLimits,
) -> Result<Dataset, DataError> {
    if path.is_dir() {
        return load(path);
    }
    if !path.is_file() {
        return Err(DataError::Layout(format!(
            "{} is neither a folder nor an archive",
            path.display()
        )));
    }
    let dest = scratch.join("dataset");
    super::archive::extract(path, &dest, limits)?;
    let is_dataset =
        |d: &Path| d.join("data.yaml").is_file() || !super::coco::annotation_files(d).is_empty();
    if is_dataset(&dest) {
        return load(&dest);
    }
    let dirs: Vec<PathBuf> = std::fs::read_dir(&dest)
        .map_err(io("list", &dest))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    match dirs.as_slice() {
        [only] if is_dataset(only) => load(only),
        _ => Err(DataError::Layout(format!(
            "{} has no data.yaml at its top or in one top-level folder",
            path.display()
        ))),
    }
}

/// `images/<split>` → `labels/<split>`: the last `images` path component becomes `labels`.
fn labels_dir_for(images: &Path) -> PathBuf {
    let parts: Vec<_> = images.components().collect();
    let at = parts.iter().rposition(|c| c.as_os_str() == "images");
    match at {
        Some(i) => parts
            .iter()
            .enumerate()
            .map(|(k, c)| {
                if k == i {
                    std::ffi::OsStr::new("labels")
                } else {
                    c.as_os_str()
                }
            })
            .collect(),
        None => images.join("labels"),
    }
}

fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io("list", dir))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

/// What `data.yaml` says: class names and where each split's images are.
#[derive(Debug)]
struct DataConfig {
    names: Vec<String>,
    splits: Vec<(String, PathBuf)>,
}

/// The text of a file, at most `limit` bytes of it (one more is read so that a
/// longer file fails the size check instead of being cut silently).
pub(crate) fn read_bounded(path: &Path, limit: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(limit as u64 + 1)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// Largest label file read: 16 MiB is some 400,000 boxes for one image.
const MAX_LABEL_BYTES: usize = 16 << 20;

/// Largest `data.yaml` read: a real one is a few hundred bytes.
const MAX_YAML_BYTES: usize = 1 << 20;
/// Deepest nesting of lists and maps in a `data.yaml`.
const MAX_YAML_DEPTH: usize = 32;
/// Most values (scalars, lists, maps) in a `data.yaml`.
const MAX_YAML_NODES: usize = 100_000;

/// Refuses a `data.yaml` that is larger, deeper or more numerous than any real one,
/// or that uses aliases (`*name`): an alias repeats a whole subtree, so a few hundred
/// bytes of nested aliases expand to gigabytes, and a dataset never needs them.
/// This reads the event stream, which expands nothing, before the document is built.
fn check_yaml_bounds(text: &str) -> Result<(), String> {
    use yaml_rust2::parser::{Event, Parser};
    if text.len() > MAX_YAML_BYTES {
        return Err(format!(
            "is {} bytes, more than the {MAX_YAML_BYTES} a data.yaml may have",
            text.len()
        ));
    }
    let mut parser = Parser::new_from_str(text);
    let (mut depth, mut nodes) = (0usize, 0usize);
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| format!("not valid YAML: {e}"))?;
        match event {
            Event::StreamEnd => return Ok(()),
            Event::Alias(_) => {
                return Err(format!(
                    "line {}: uses an alias (*name); data.yaml needs no anchors or aliases: write the values out",
                    mark.line()
                ));
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                depth += 1;
                nodes += 1;
                if depth > MAX_YAML_DEPTH {
                    return Err(format!(
                        "line {}: nests lists or maps more than {MAX_YAML_DEPTH} deep",
                        mark.line()
                    ));
                }
            }
            Event::SequenceEnd | Event::MappingEnd => depth = depth.saturating_sub(1),
            Event::Scalar(..) => nodes += 1,
            _ => {}
        }
        if nodes > MAX_YAML_NODES {
            return Err(format!("has more than {MAX_YAML_NODES} values"));
        }
    }
}

fn parse_data_yaml(text: &str) -> Result<DataConfig, String> {
    use yaml_rust2::{Yaml, YamlLoader};
    check_yaml_bounds(text)?;
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    let doc = docs.first().ok_or("is empty")?;
    let names: Vec<String> = match &doc["names"] {
        Yaml::Array(items) => items.iter().map(yaml_scalar).collect(),
        Yaml::Hash(map) => {
            let mut pairs: Vec<(i64, String)> = map
                .iter()
                .map(|(k, v)| {
                    k.as_i64()
                        .map(|k| (k, yaml_scalar(v)))
                        .ok_or("names keys must be class ids 0, 1, …")
                })
                .collect::<Result<_, _>>()?;
            pairs.sort();
            if pairs.iter().enumerate().any(|(i, (k, _))| *k != i as i64) {
                return Err("names must number the classes 0, 1, 2, … without gaps".into());
            }
            pairs.into_iter().map(|(_, v)| v).collect()
        }
        Yaml::BadValue => return Err("has no `names` (the class names)".into()),
        _ => return Err("`names` must be a list or a map of class id to name".into()),
    };
    if names.is_empty() {
        return Err("`names` is empty".into());
    }
    if let Some(nc) = doc["nc"].as_i64()
        && nc as usize != names.len()
    {
        return Err(format!("nc is {nc} but {} names are given", names.len()));
    }
    let splits = ["train", "val", "test"]
        .iter()
        .map(|&s| {
            let path = doc[s]
                .as_str()
                .map_or_else(|| PathBuf::from("images").join(s), PathBuf::from);
            (s.to_string(), path)
        })
        .collect();
    Ok(DataConfig { names, splits })
}

fn yaml_scalar(v: &yaml_rust2::Yaml) -> String {
    match v {
        yaml_rust2::Yaml::String(s) => s.clone(),
        yaml_rust2::Yaml::Integer(i) => i.to_string(),
        yaml_rust2::Yaml::Real(r) => r.clone(),
        yaml_rust2::Yaml::Boolean(b) => b.to_string(),
        _ => String::new(),
    }
}

/// Parses one label file, appending `file:line: problem` for each bad line.
pub fn parse_labels(
    text: &str,
    file: &str,
    classes: usize,
    issues: &mut Vec<String>,
) -> Vec<Label> {
    let mut labels = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() != 5 {
            issues.push(format!(
                "{file}:{line_no}: expected 5 fields (class cx cy w h), found {}",
                fields.len()
            ));
            continue;
        }
        let class = match fields[0].parse::<usize>() {
            Ok(c) if c < classes => c,
            Ok(c) => {
                issues.push(format!(
                    "{file}:{line_no}: class {c} is unknown (data.yaml names {classes} classes)"
                ));
                continue;
            }
            Err(_) => {
                issues.push(format!(
                    "{file}:{line_no}: class '{}' is not a class id",
                    fields[0]
                ));
                continue;
            }
        };
        let mut v = [0f32; 4];
        let mut ok = true;
        for (i, (name, field)) in ["cx", "cy", "w", "h"].iter().zip(&fields[1..]).enumerate() {
            match field.parse::<f32>() {
                Ok(x) if x.is_finite() && (0.0..=1.0 + 1e-6).contains(&x) && (i < 2 || x > 0.0) => {
                    v[i] = x.min(1.0)
                }
                Ok(x) => {
                    issues.push(format!("{file}:{line_no}: {name} = {x} is out of range (normalised coordinates are in [0, 1], sizes > 0)"));
                    ok = false;
                }
                Err(_) => {
                    issues.push(format!(
                        "{file}:{line_no}: {name} = '{field}' is not a number"
                    ));
                    ok = false;
                }
            }
        }
        if ok {
            labels.push(Label {
                class,
                cx: v[0],
                cy: v[1],
                w: v[2],
                h: v[3],
            });
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_alias_bombs_and_deep_nesting_are_refused_before_expansion() {
        // Nine levels of ten aliases each would expand to 10^9 strings.
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..9 {
            let prev = (b'a' + level - 1) as char;
            let name = (b'a' + level) as char;
            let refs = vec![format!("*{prev}"); 10].join(", ");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        bomb.push_str("names: [cat]\n");
        let started = std::time::Instant::now();
        let err = parse_data_yaml(&bomb).unwrap_err();
        assert!(err.contains("alias"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));

        let deep = format!("names: [cat]\nx: {}{}\n", "[".repeat(40), "]".repeat(40));
        assert!(parse_data_yaml(&deep).unwrap_err().contains("deep"));
        let big = format!("names: [cat]\n# {}\n", "x".repeat(MAX_YAML_BYTES));
        assert!(parse_data_yaml(&big).unwrap_err().contains("bytes"));
        // An anchor without an alias expands nothing and stays readable.
        assert_eq!(
            parse_data_yaml("names: &n [cat, dog]").unwrap().names,
            vec!["cat", "dog"]
        );
    }

    #[test]
    fn every_bad_line_is_reported_with_its_file_and_line() {
        let mut issues = Vec::new();
        let text = "0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1\n1 0.5 1.5 0.1 0.1\n0 0.5 0.5\nx 0.1 0.1 0.1 0.1\n\n2 0.1 0.1 0 0.1\n";
        let labels = parse_labels(text, "labels/val/a.txt", 3, &mut issues);
        assert_eq!(labels.len(), 1);
        assert_eq!(issues.len(), 5, "{issues:#?}");
        assert!(issues[0].starts_with("labels/val/a.txt:2: class 7 is unknown"));
        assert!(issues[1].starts_with("labels/val/a.txt:3: cy = 1.5 is out of range"));
        assert!(issues[2].starts_with("labels/val/a.txt:4: expected 5 fields"));
        assert!(issues[3].starts_with("labels/val/a.txt:5: class 'x'"));
        assert!(issues[4].starts_with("labels/val/a.txt:7: w = 0"));
    }

    #[test]
    fn names_come_as_a_list_or_a_map() {
        assert_eq!(
            parse_data_yaml("names: [a, b]").unwrap().names,
            vec!["a", "b"]
        );
        assert_eq!(
            parse_data_yaml("names:\n  1: b\n  0: a\n").unwrap().names,
            vec!["a", "b"]
        );
        assert!(
            parse_data_yaml("names:\n  0: a\n  2: c\n")
                .unwrap_err()
                .contains("without gaps")
        );
        assert!(
            parse_data_yaml("nc: 3\nnames: [a]")
                .unwrap_err()
                .contains("nc is 3")
        );
        assert!(
            parse_data_yaml("train: x")
                .unwrap_err()
                .contains("no `names`")
        );
    }
}
