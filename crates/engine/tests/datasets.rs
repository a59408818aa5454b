//! Datasets from folders and archives: the synthetic set round-trips, bad labels are
//! listed together, hostile archives are refused quickly with their specific error.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use effp_engine::data::DataError;
use effp_engine::data::archive::{ArchiveError, ArchiveLimits, extract};
use effp_engine::data::dataset::{load, open};
use effp_engine::data::synth::{SynthOptions, generate};
use effp_testkit::fixtures;

fn synth(dir: &Path, images: usize, seed: u64) {
    generate(
        dir,
        SynthOptions {
            images,
            seed,
            imgsz: 64,
        },
    )
    .unwrap();
}

#[test]
fn the_synthetic_set_loads_with_its_classes_and_is_reproducible() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    synth(a.path(), 20, 9);
    synth(b.path(), 20, 9);
    let ds = load(a.path()).unwrap();
    assert_eq!(ds.names, vec!["circle", "square", "triangle"]);
    assert_eq!(ds.split("train").unwrap().len(), 16);
    assert_eq!(ds.split("val").unwrap().len(), 4);
    assert!(
        ds.split("val")
            .unwrap()
            .iter()
            .all(|s| !s.labels.is_empty())
    );
    let err = ds.split("test").unwrap_err().to_string();
    assert!(
        err.contains("no split 'test'") && err.contains("(splits: train, val)"),
        "{err}"
    );
    for rel in [
        "images/val/000016.png",
        "labels/val/000016.txt",
        "images/train/000003.png",
    ] {
        assert_eq!(
            std::fs::read(a.path().join(rel)).unwrap(),
            std::fs::read(b.path().join(rel)).unwrap(),
            "{rel}"
        );
    }
}

#[test]
fn every_bad_label_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 10, 1);
    std::fs::write(
        dir.path().join("labels/val/000008.txt"),
        "0 0.5 0.5 0.2 0.2\n9 0.5 0.5 0.1 0.1\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("labels/train/000001.txt"),
        "1 0.5 0.5 0.2\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("labels/train/orphan.txt"),
        "0 0.5 0.5 0.2 0.2\n",
    )
    .unwrap();
    let err = load(dir.path()).unwrap_err();
    let DataError::Labels(issues) = &err else {
        panic!("{err}")
    };
    assert_eq!(issues.len(), 3, "{issues:#?}");
    let text = err.to_string();
    assert!(
        text.contains("labels/val/000008.txt:2: class 9 is unknown"),
        "{text}"
    );
    assert!(
        text.contains("labels/train/000001.txt:1: expected 5 fields"),
        "{text}"
    );
    assert!(text.contains("labels/train/orphan.txt: no image"), "{text}");
}

fn zip_of(path: &Path, entries: &[(&str, &[u8])]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap();
}

#[test]
fn a_zipped_dataset_opens_like_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    synth(&dir.path().join("set"), 10, 2);
    let archive = dir.path().join("set.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&archive).unwrap(),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        tar.append_dir_all("set", dir.path().join("set")).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    }
    let scratch = tempfile::tempdir().unwrap();
    let ds = open(&archive, scratch.path(), ArchiveLimits::default()).unwrap();
    assert_eq!(ds.split("val").unwrap().len(), 2);
    assert_eq!(ds.split("train").unwrap().len(), 8);
}

fn refused(archive: &Path, limits: ArchiveLimits) -> (ArchiveError, f64, bool) {
    let dest = archive.with_extension("out");
    let start = Instant::now();
    let err = extract(archive, &dest, limits).unwrap_err();
    (err, start.elapsed().as_secs_f64(), dest.exists())
}

#[test]
fn a_zip_bomb_is_refused_before_it_fills_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.zip");
    let zeros = vec![0u8; 64 << 20];
    zip_of(
        &bomb,
        &[("data.yaml", b"names: [a]"), ("images/train/a.png", &zeros)],
    );
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
    let (err, seconds, left) = refused(&bomb, ArchiveLimits::default());
    assert!(matches!(err, ArchiveError::RatioExceeded { .. }), "{err}");
    assert!(err.to_string().contains("decompression bomb"));
    assert!(seconds < 5.0 && !left, "{seconds}s, left behind: {left}");
}

#[test]
fn path_traversal_is_refused_in_zip_and_tar() {
    let dir = tempfile::tempdir().unwrap();
    let z = dir.path().join("evil.zip");
    zip_of(&z, &[("../escape.txt", b"x")]);
    let (err, _, _) = refused(&z, ArchiveLimits::default());
    assert!(
        matches!(err, ArchiveError::PathTraversal(ref n) if n == "../escape.txt"),
        "{err}"
    );
    assert!(!dir.path().parent().unwrap().join("escape.txt").exists());

    let t = dir.path().join("evil.tar");
    let mut data = Vec::new();
    {
        let mut b = tar::Builder::new(&mut data);
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        // Write the raw name to get past the builder's own checks.
        h.as_gnu_mut().unwrap().name[..14].copy_from_slice(b"../../evil.txt");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        b.finish().unwrap();
    }
    std::fs::write(&t, data).unwrap();
    let (err, _, _) = refused(&t, ArchiveLimits::default());
    assert!(matches!(err, ArchiveError::PathTraversal(_)), "{err}");
}

#[test]
fn links_and_device_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("links.tar");
    let mut data = Vec::new();
    {
        let mut b = tar::Builder::new(&mut data);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "images/train/a.png", "/etc/passwd")
            .unwrap();
        b.finish().unwrap();
    }
    std::fs::write(&t, &data).unwrap();
    let (err, _, _) = refused(&t, ArchiveLimits::default());
    assert!(matches!(err, ArchiveError::Link(_)), "{err}");

    let d = dir.path().join("device.tar");
    let mut data = Vec::new();
    {
        let mut b = tar::Builder::new(&mut data);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Char);
        h.set_size(0);
        h.set_path("images/train/tty").unwrap();
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
        b.finish().unwrap();
    }
    std::fs::write(&d, &data).unwrap();
    let (err, _, _) = refused(&d, ArchiveLimits::default());
    assert!(matches!(err, ArchiveError::SpecialFile(_)), "{err}");
}

#[test]
fn an_archive_of_100_000_files_is_refused_from_its_directory_alone() {
    let dir = tempfile::tempdir().unwrap();
    let z = dir.path().join("many.zip");
    {
        let mut w =
            zip::ZipWriter::new(std::io::BufWriter::new(std::fs::File::create(&z).unwrap()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for i in 0..100_000 {
            w.start_file(format!("labels/train/{i}.txt"), opts).unwrap();
        }
        w.finish().unwrap();
    }
    let (err, seconds, left) = refused(&z, ArchiveLimits::default());
    assert!(
        matches!(err, ArchiveError::TooManyEntries { limit: 50_000 }),
        "{err}"
    );
    assert!(seconds < 5.0 && !left, "{seconds}s");
}

/// Writes the YOLO set at `yolo` as a COCO dataset at `coco` (images copied).
fn yolo_to_coco(yolo: &Path, coco: &Path) {
    let ds = load(yolo).unwrap();
    std::fs::create_dir_all(coco.join("annotations")).unwrap();
    for (split, samples) in &ds.splits {
        let dir = coco.join("images").join(split);
        std::fs::create_dir_all(&dir).unwrap();
        let mut images = Vec::new();
        let mut annotations = Vec::new();
        for (i, s) in samples.iter().enumerate() {
            let name = s.image.file_name().unwrap().to_str().unwrap().to_string();
            std::fs::copy(&s.image, dir.join(&name)).unwrap();
            images.push(
                serde_json::json!({ "id": i + 10, "file_name": name, "width": 64, "height": 64 }),
            );
            for l in &s.labels {
                let b = l.to_pixels(64, 64);
                annotations.push(serde_json::json!({ "id": annotations.len() + 1, "image_id": i + 10, "category_id": l.class + 7,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "iscrowd": 0, "area": (b[2] - b[0]) * (b[3] - b[1]) }));
            }
        }
        let categories: Vec<_> = ds
            .names
            .iter()
            .enumerate()
            .map(|(k, n)| serde_json::json!({ "id": k + 7, "name": n }))
            .collect();
        let doc = serde_json::json!({ "images": images, "annotations": annotations, "categories": categories });
        std::fs::write(
            coco.join("annotations")
                .join(format!("instances_{split}.json")),
            doc.to_string(),
        )
        .unwrap();
    }
}

#[test]
fn a_coco_dataset_reads_like_its_yolo_twin() {
    let dir = tempfile::tempdir().unwrap();
    synth(&dir.path().join("yolo"), 10, 5);
    yolo_to_coco(&dir.path().join("yolo"), &dir.path().join("coco"));
    let yolo = load(&dir.path().join("yolo")).unwrap();
    let coco = load(&dir.path().join("coco")).unwrap();
    assert_eq!(coco.names, yolo.names);
    for split in ["train", "val"] {
        let (a, b) = (yolo.split(split).unwrap(), coco.split(split).unwrap());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.labels.len(), y.labels.len());
            for (p, q) in x.labels.iter().zip(&y.labels) {
                assert_eq!(p.class, q.class);
                assert!(
                    (p.cx - q.cx).abs() < 1e-5 && (p.w - q.w).abs() < 1e-5,
                    "{p:?} vs {q:?}"
                );
            }
        }
    }
}

/// `iscrowd=1` annotations are crowd regions: kept apart from the objects (training
/// never sees them; evaluation ignores detections on them), with the same boxes.
#[test]
fn coco_crowd_regions_are_kept_apart_from_the_objects() {
    let dir = tempfile::tempdir().unwrap();
    synth(&dir.path().join("yolo"), 6, 8);
    let coco_dir = dir.path().join("coco");
    yolo_to_coco(&dir.path().join("yolo"), &coco_dir);
    let file = coco_dir.join("annotations/instances_train.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let mut crowd_ids = 0;
    for a in doc["annotations"].as_array_mut().unwrap() {
        if a["id"].as_u64().unwrap() % 3 == 0 {
            a["iscrowd"] = 1.into();
            crowd_ids += 1;
        }
    }
    std::fs::write(&file, doc.to_string()).unwrap();
    let yolo = load(&dir.path().join("yolo")).unwrap();
    let coco = load(&coco_dir).unwrap();
    let (a, b) = (yolo.split("train").unwrap(), coco.split("train").unwrap());
    let mut id = 0;
    let mut crowds = 0;
    for (x, y) in a.iter().zip(b) {
        let (mut objects, mut regions) = (y.labels.iter(), y.crowd.iter());
        for p in &x.labels {
            id += 1;
            let q = if id % 3 == 0 {
                crowds += 1;
                regions.next()
            } else {
                objects.next()
            }
            .unwrap();
            assert_eq!(p.class, q.class);
            assert!(
                (p.cx - q.cx).abs() < 1e-5 && (p.w - q.w).abs() < 1e-5,
                "{p:?} vs {q:?}"
            );
        }
        assert!(objects.next().is_none() && regions.next().is_none());
    }
    assert_eq!(crowds, crowd_ids);
    assert!(crowds > 0);
    // YOLO labels have no crowd regions.
    assert!(a.iter().all(|s| s.crowd.is_empty()));
}

#[test]
fn coco_problems_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    synth(&dir.path().join("yolo"), 5, 6);
    let coco = dir.path().join("coco");
    yolo_to_coco(&dir.path().join("yolo"), &coco);
    let path = coco.join("annotations/instances_val.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let anns = doc["annotations"].as_array_mut().unwrap();
    anns[0]["category_id"] = serde_json::json!(99);
    anns.push(
        serde_json::json!({ "id": 500, "image_id": 12345, "category_id": 7, "bbox": [1, 1, 2, 2] }),
    );
    anns.push(serde_json::json!({ "id": 501, "image_id": 10, "category_id": 7, "bbox": [50, 50, 40, 40] }));
    std::fs::write(&path, doc.to_string()).unwrap();
    let err = load(&coco).unwrap_err();
    let DataError::Labels(issues) = &err else {
        panic!("{err}")
    };
    assert_eq!(issues.len(), 3, "{issues:#?}");
    let text = err.to_string();
    assert!(
        text.contains("annotations/instances_val.json: annotation 1: category_id 99"),
        "{text}"
    );
    assert!(
        text.contains("annotation 500: image_id 12345 is not in images"),
        "{text}"
    );
    assert!(
        text.contains(
            "annotation 501: bbox [50.0, 50.0, 40.0, 40.0] is empty or outside its 64x64 image"
        ),
        "{text}"
    );
}

#[test]
fn training_batches_are_stacked_tensors_and_repeat_for_the_same_seed() {
    use effp_engine::data::augment::Augment;
    use effp_engine::data::loader::{LoaderOptions, epoch};
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), 25, 3);
    let ds = load(dir.path()).unwrap();
    let train = ds.split("train").unwrap();
    let options = LoaderOptions {
        batch: 8,
        imgsz: 64,
        seed: 1,
        augment: Some(Augment::default()),
        mosaic_epochs: 1,
    };
    let a: Vec<_> = epoch(train, options, 0).map(Result::unwrap).collect();
    assert_eq!(a.len(), 3, "20 images in batches of 8");
    assert_eq!(a[0].images.size(), [8, 3, 64, 64]);
    assert_eq!(a[2].images.size(), [4, 3, 64, 64]);
    for b in &a {
        let t = Vec::<f32>::try_from(b.targets.flatten(0, -1)).unwrap();
        assert!(
            t.chunks(6)
                .all(|r| r[2..].iter().all(|&v| (0.0..=1.0).contains(&v)) && r[1] < 3.0)
        );
    }
    let again: Vec<_> = epoch(train, options, 0).map(Result::unwrap).collect();
    assert!(
        a.iter()
            .zip(&again)
            .all(|(x, y)| x.images.equal(&y.images) && x.targets.equal(&y.targets))
    );
    let next: Vec<_> = epoch(train, options, 1).map(Result::unwrap).collect();
    assert!(
        !a[0].images.equal(&next[0].images),
        "another epoch, another order"
    );
}

#[test]
fn hsv_jitter_matches_ultralytics_random_hsv() {
    use effp_engine::data::augment::{HsvGains, jitter_hsv};
    use image::{Rgb, RgbImage};
    // Every grey level, the primaries and a spread of random colours.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 24) as u8
    };
    let mut pixels: Vec<[u8; 3]> = (0..=255u8).step_by(5).map(|v| [v, v, v]).collect();
    pixels.extend([
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [1, 0, 0],
    ]);
    pixels.extend((0..1500).map(|_| [next(), next(), next()]));
    let gains = HsvGains::default();
    let cases = [
        [0.0, 0.0, 0.0],
        [1.0, 1.0, 1.0],
        [-1.0, -1.0, -1.0],
        [0.37, -0.62, 0.18],
        [-0.8, 0.45, -0.33],
    ];
    let reference = fixtures::run_script(
        "ultralytics_hsv.py",
        &[],
        &serde_json::json!({
            "pixels": pixels,
            "cases": cases,
            "gains": [gains.h, gains.s, gains.v],
        }),
    );
    for (case, expected) in cases.iter().zip(reference["pixels"].as_array().unwrap()) {
        let mut img = RgbImage::from_fn(pixels.len() as u32, 1, |x, _| Rgb(pixels[x as usize]));
        let r = HsvGains {
            h: case[0] * gains.h,
            s: case[1] * gains.s,
            v: case[2] * gains.v,
        };
        jitter_hsv(&mut img, &r);
        let mut off_by_one = 0;
        for (i, want) in expected.as_array().unwrap().iter().enumerate() {
            let got = img.get_pixel(i as u32, 0).0;
            for c in 0..3 {
                let d = (got[c] as i64 - want[c].as_i64().unwrap()).abs();
                assert!(
                    d <= 1,
                    "case {case:?}, pixel {:?}: {got:?} vs {want}",
                    pixels[i]
                );
                off_by_one += d;
            }
        }
        // OpenCV's fixed-point rounding differs from exact arithmetic in rare pixels.
        assert!(
            off_by_one * 100 <= (3 * pixels.len()) as i64,
            "case {case:?}: {off_by_one} channels off by one"
        );
    }
}
