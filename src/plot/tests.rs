//! The figure end to end: sizes, content, formats, odd inputs.

use super::*;
use std::path::PathBuf;

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mtl-plot-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sample_curves() -> Curves {
    Curves {
        epochs: vec![1, 2, 3, 4, 5],
        loss: vec![
            (
                "digit".into(),
                vec![2.0, 1.2, 0.8, 0.6, 0.5],
                Some(vec![2.1, 1.4, 1.0, 0.9, 0.85]),
            ),
            ("parity".into(), vec![0.7, 0.5, 0.4, 0.35, 0.3], None),
        ],
        metrics: vec![(
            "digit accuracy".into(),
            vec![0.3, 0.6, 0.75, 0.82, 0.88],
            Some(vec![0.28, 0.55, 0.7, 0.76, 0.8]),
        )],
        weights: vec![
            ("digit".into(), vec![1.0, 1.0, 0.9, 0.8, 0.8]),
            ("parity".into(), vec![1.0, 1.1, 1.2, 1.2, 1.3]),
        ],
    }
}

fn sample_evals() -> Vec<Evaluation> {
    vec![
        Evaluation::Confusion {
            head: "digit".into(),
            classes: vec!["zero".into(), "one".into(), "two".into()],
            counts: vec![vec![50, 3, 1], vec![2, 40, 8], vec![0, 5, 61]],
        },
        Evaluation::Scatter {
            head: "count".into(),
            truth: (0..100).map(|i| i as f32 * 0.1).collect(),
            pred: (0..100)
                .map(|i| i as f32 * 0.1 + ((i * 37 % 11) as f32 - 5.0) * 0.05)
                .collect(),
        },
    ]
}

/// Decodes a PNG and checks its size and that it is not one flat colour.
fn check_png(path: &Path, w: u32, h: u32) -> image::RgbImage {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8();
    assert_eq!(img.dimensions(), (w, h));
    let first = *img.get_pixel(0, 0);
    let differing = img.pixels().filter(|p| **p != first).count();
    assert!(
        differing > (w * h / 100) as usize,
        "image is (almost) blank: {differing} pixels differ"
    );
    img
}

#[test]
fn png_has_expected_size_and_content() {
    let dir = tmp_dir("png");
    let path = dir.join("fig.png");
    draw(&sample_curves(), &sample_evals(), &path).unwrap();
    // 2 loss + 1 metric + weights + confusion + scatter = 6 panels: 3 × 2.
    let img = check_png(&path, 3 * PANEL_W, 2 * PANEL_H);
    // Text was rasterised: the title row of the first panel has dark pixels.
    let dark_in_title = (0..PANEL_W)
        .flat_map(|x| (0..30).map(move |y| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
        .count();
    assert!(
        dark_in_title > 50,
        "no title text drawn ({dark_in_title} dark pixels)"
    );
    // The confusion matrix's darkest cell is dark blue.
    let has_heat = img
        .pixels()
        .any(|p| p.0[2] > 90 && p.0[0] < 30 && p.0[1] < 70);
    assert!(has_heat, "no heat map colours found");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn svg_names_every_head_and_panel() {
    let dir = tmp_dir("svg");
    let path = dir.join("fig.SVG");
    draw(&sample_curves(), &sample_evals(), &path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(100)]);
    assert!(svg.contains(&format!("width=\"{}\"", 3 * PANEL_W)));
    for needle in [
        "digit loss",
        "parity loss",
        "digit accuracy",
        "loss weights",
        "digit: confusion",
        "count: predicted vs true",
        "epoch",
        "validation",
        "predicted",
        "zero",
        "two",
        "y = x",
    ] {
        assert!(svg.contains(needle), "SVG lacks {needle:?}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn layout_one_and_four_panels() {
    let dir = tmp_dir("layout");
    let one = Curves {
        epochs: vec![1, 2],
        loss: vec![("h".into(), vec![1.0, 0.5], None)],
        ..Default::default()
    };
    draw(&one, &[], &dir.join("one.png")).unwrap();
    check_png(&dir.join("one.png"), PANEL_W, PANEL_H);
    let mut four = one.clone();
    four.loss.push(("g".into(), vec![1.0, 0.4], None));
    four.weights = vec![("h".into(), vec![1.0, 1.0]), ("g".into(), vec![1.0, 1.0])];
    four.metrics.push(("h mae".into(), vec![3.0, 2.0], None));
    draw(&four, &[], &dir.join("four.png")).unwrap();
    check_png(&dir.join("four.png"), 3 * PANEL_W, 2 * PANEL_H);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn unknown_extension_is_a_clear_error() {
    let dir = tmp_dir("ext");
    for name in ["fig.jpg", "fig", "fig.png.txt"] {
        let e = draw(&sample_curves(), &[], &dir.join(name)).unwrap_err();
        assert!(e.contains(".png or .svg"), "{e}");
        assert!(!dir.join(name).exists());
    }
    let e = draw(&sample_curves(), &[], &dir.join("missing-dir/fig.png")).unwrap_err();
    assert!(e.contains("cannot write"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn weights_panel_only_when_informative() {
    let one_head = Curves {
        epochs: vec![1, 2],
        loss: vec![("h".into(), vec![1.0, 0.5], None)],
        weights: vec![("h".into(), vec![1.0, 1.0])],
        ..Default::default()
    };
    assert_eq!(panels(&one_head, &[]).len(), 1);
    let mut varying = one_head.clone();
    varying.weights[0].1 = vec![1.0, 0.5];
    assert_eq!(panels(&varying, &[]).len(), 2);
}

#[test]
fn edge_cases_never_panic() {
    let dir = tmp_dir("edge");
    let evals = sample_evals();
    let nan = f64::NAN;
    let cases: Vec<(&str, Curves, Vec<Evaluation>, bool)> = vec![
        ("empty", Curves::default(), vec![], false),
        ("empty-with-evals", Curves::default(), evals.clone(), true),
        (
            "empty-epochs",
            Curves {
                loss: vec![("h".into(), vec![], Some(vec![]))],
                ..Default::default()
            },
            vec![],
            false,
        ),
        (
            "all-nan",
            Curves {
                epochs: vec![1, 2],
                loss: vec![("h".into(), vec![nan, nan], Some(vec![nan, nan]))],
                ..Default::default()
            },
            vec![],
            false,
        ),
        (
            "some-nan",
            Curves {
                epochs: vec![1, 2, 3, 4],
                loss: vec![(
                    "h".into(),
                    vec![1.0, nan, 0.5, f64::INFINITY],
                    Some(vec![nan, nan, nan, nan]),
                )],
                metrics: vec![("h acc".into(), vec![nan; 4], None)],
                weights: vec![
                    ("h".into(), vec![nan, 1.0, 2.0, nan]),
                    ("g".into(), vec![1.0; 4]),
                ],
            },
            vec![],
            true,
        ),
        (
            "single-epoch",
            Curves {
                epochs: vec![3],
                loss: vec![("h".into(), vec![0.7], Some(vec![0.9]))],
                metrics: vec![("h accuracy".into(), vec![1.0], Some(vec![1.0]))],
                weights: vec![("h".into(), vec![1.0]), ("g".into(), vec![1.0])],
            },
            vec![],
            true,
        ),
        (
            "ragged",
            Curves {
                epochs: vec![1],
                loss: vec![("h".into(), vec![0.7, 0.6, 0.5], Some(vec![0.9]))],
                ..Default::default()
            },
            vec![],
            true,
        ),
        (
            "odd-evals",
            Curves::default(),
            vec![
                Evaluation::Confusion {
                    head: "a".into(),
                    classes: vec![],
                    counts: vec![],
                },
                Evaluation::Confusion {
                    head: "b".into(),
                    classes: vec!["x".into(), "y".into()],
                    counts: vec![vec![0, 0], vec![3]],
                },
                Evaluation::Confusion {
                    head: "c".into(),
                    classes: (0..40).map(|i| format!("class-{i}")).collect(),
                    counts: (0..40)
                        .map(|i| {
                            (0..40)
                                .map(|j| if i == j { 1000 } else { (i + j) as u64 % 3 })
                                .collect()
                        })
                        .collect(),
                },
                Evaluation::Confusion {
                    head: "d".into(),
                    classes: vec!["big".into()],
                    counts: vec![vec![u64::MAX]],
                },
                Evaluation::Scatter {
                    head: "e".into(),
                    truth: vec![2.0; 10],
                    pred: vec![2.0; 10],
                },
                Evaluation::Scatter {
                    head: "f".into(),
                    truth: vec![],
                    pred: vec![],
                },
                Evaluation::Scatter {
                    head: "g".into(),
                    truth: vec![f32::NAN, 1.0, 0.0],
                    pred: vec![1.0, f32::INFINITY, 0.0],
                },
                Evaluation::Scatter {
                    head: "h".into(),
                    truth: vec![0.0; 3],
                    pred: vec![0.0; 3],
                },
            ],
            true,
        ),
    ];
    for (name, curves, evals, expect_ok) in cases {
        for ext in ["png", "svg"] {
            let path = dir.join(format!("{name}.{ext}"));
            let r = draw(&curves, &evals, &path);
            match (&r, expect_ok) {
                (Ok(()), true) => assert!(path.exists()),
                (Err(e), false) => assert!(e.contains("nothing to plot"), "{name}: {e}"),
                _ => panic!("{name}.{ext}: unexpected {r:?}"),
            }
        }
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn scatter_of_many_points_is_thinned() {
    let n = 20_000;
    let e = [Evaluation::Scatter {
        head: "x".into(),
        truth: vec![1.0; n],
        pred: vec![1.5; n],
    }];
    match &panels(&Curves::default(), &e)[0] {
        Panel::Scatter {
            points,
            n: total,
            title,
        } => {
            assert_eq!(*total, n);
            assert!(points.len() <= 5000);
            assert!(title.contains("MAE 0.5"), "{title}");
        }
        _ => unreachable!(),
    }
}

const SAMPLE_JSON: &str = r#"{
  "epochs": [
    {"epoch": 1, "lr": 0.001,
     "train": {"loss": 1.2, "heads": {"digit": {"loss": 0.9, "accuracy": 0.7}, "parity": {"loss": 0.3}}, "aux": {"l2": 0.1}},
     "val": null,
     "loss_weights": {"digit": 1.0, "parity": 1.0}, "samples_per_sec": 1234.0, "best": true},
    {"epoch": 2, "lr": 0.001,
     "train": {"loss": 0.8, "heads": {"digit": {"loss": 0.6, "accuracy": null}, "parity": {"loss": 0.2, "f1": 0.5}}},
     "val": {"loss": 0.9, "heads": {"digit": {"loss": 0.7, "accuracy": 0.75}, "parity": {"loss": 0.25}}},
     "loss_weights": {"digit": 1.0, "parity": 0.5}, "samples_per_sec": 1300.0, "best": true}
  ],
  "heads": ["parity", "digit"]
}"#;

fn same(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x == y || (x.is_nan() && y.is_nan()))
}

#[test]
fn parses_training_statistics() {
    let v: serde_json::Value = serde_json::from_str(SAMPLE_JSON).unwrap();
    let c = curves_from_json(&v).unwrap();
    let nan = f64::NAN;
    assert_eq!(c.epochs, vec![1, 2]);
    let heads: Vec<&str> = c.loss.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(heads, ["parity", "digit"], "order of the \"heads\" list");
    assert!(same(&c.loss[0].1, &[0.3, 0.2]));
    assert!(same(c.loss[0].2.as_ref().unwrap(), &[nan, 0.25]));
    assert!(same(&c.loss[1].1, &[0.9, 0.6]));
    assert!(same(c.loss[1].2.as_ref().unwrap(), &[nan, 0.7]));
    let labels: Vec<&str> = c.metrics.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(labels, ["parity f1", "digit accuracy"]);
    assert!(same(&c.metrics[0].1, &[nan, 0.5]));
    assert!(c.metrics[0].2.is_none(), "no validation f1");
    assert!(same(&c.metrics[1].1, &[0.7, nan]));
    assert!(same(c.metrics[1].2.as_ref().unwrap(), &[nan, 0.75]));
    assert_eq!(
        c.weights,
        vec![
            ("parity".to_string(), vec![1.0, 0.5]),
            ("digit".to_string(), vec![1.0, 1.0])
        ]
    );

    // And it draws.
    let dir = tmp_dir("json");
    draw(&c, &[], &dir.join("fig.svg")).unwrap();
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn parse_errors_and_minimal_inputs() {
    let parse = |s: &str| curves_from_json(&serde_json::from_str(s).unwrap());
    assert!(parse("[]").unwrap_err().contains("object"));
    assert!(parse("{}").unwrap_err().contains("epochs"));
    assert!(parse(r#"{"epochs": [1]}"#)
        .unwrap_err()
        .contains("epochs[0]"));
    assert!(parse(r#"{"epochs": [], "heads": [1]}"#)
        .unwrap_err()
        .contains("heads"));
    let c = parse(r#"{"epochs": []}"#).unwrap();
    assert_eq!(c, Curves::default());
    // No "heads" list, no "epoch" numbers, no weights, no val.
    let c = parse(r#"{"epochs": [{"train": {"heads": {"a": {"loss": 1}}}}, {"train": {"heads": {"a": {"loss": 0.5}}}}]}"#).unwrap();
    assert_eq!(c.epochs, vec![1, 2]);
    assert_eq!(c.loss, vec![("a".to_string(), vec![1.0, 0.5], None)]);
    assert!(c.weights.is_empty() && c.metrics.is_empty());
}

#[test]
fn helpers() {
    assert_eq!(padded(1.0, 1.0), 0.9..1.1);
    assert_eq!(padded(0.0, 0.0), -1.0..1.0);
    assert_eq!(padded(f64::NAN, 1.0), 0.0..1.0);
    assert_eq!(tick(0.5, 1.0), "0.5");
    assert_eq!(tick(0.25, 0.1), "0.25");
    assert_eq!(tick(3.0, 8.0), "3");
    assert_eq!(tick(-0.0001, 1.0), "0.0");
    assert_eq!(tick(123456.0, 1.0), "1.2e5");
    assert_eq!(ellipsize("abcdef", 4), "abc…");
    let corner =
        |run: Vec<(f64, f64)>| format!("{:?}", legend_corner(std::iter::once(run), (0.3, 0.2)));
    assert_eq!(
        corner(vec![(0.0, 1.0), (0.5, 0.2), (1.0, 0.0)]),
        "UpperRight"
    );
    assert_eq!(
        corner(vec![(0.0, 0.0), (0.5, 0.8), (1.0, 1.0)]),
        "LowerRight"
    );
    assert_eq!(
        corner(vec![(0.0, 0.0), (1.0, 1.0), (1.0, 0.0)]),
        "UpperLeft"
    );
    assert_eq!(
        runs(&[1.0, 2.0, 3.0, 4.0], &[1.0, f64::NAN, 2.0, 3.0]),
        vec![vec![(1.0, 1.0)], vec![(3.0, 2.0), (4.0, 3.0)]]
    );
}
