"""Captions files: good lines load in order, each bad line becomes a Problem naming file:line and the reason."""

import json

import pytest

from cogvideo_lite.data.captions import Entry, Problem, load_entries


@pytest.fixture
def dataset(tmp_path):
    """A folder with three (empty) video files; the captions module checks existence, not content."""
    root = tmp_path / "data"
    (root / "clips").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (root / "clips" / name).write_bytes(b"")
    (tmp_path / "outside.mp4").write_bytes(b"")
    return root


def write_jsonl(root, lines: list[bytes]):
    (root / "captions.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def record(video, caption) -> bytes:
    return json.dumps({"video": video, "caption": caption}).encode()


def test_good_jsonl_loads_in_order_with_lines_and_resolved_paths(dataset):
    write_jsonl(dataset, [record("clips/a.mp4", " a red circle "), b"", record("clips/b.mp4", "a blue square")])
    entries, problems = load_entries(dataset)
    assert problems == []
    assert entries == [
        Entry(video=(dataset / "clips/a.mp4").resolve(), caption="a red circle", line=1),
        Entry(video=(dataset / "clips/b.mp4").resolve(), caption="a blue square", line=3),
    ]


def test_every_bad_line_is_named_with_its_reason(dataset):
    write_jsonl(
        dataset,
        [
            record("clips/a.mp4", "good"),  # 1
            b'{"video": "clips/b.mp4", "caption": ',  # 2
            b'{"video": "clips/b.mp4", "caption": "caf\xe9"}',  # 3: latin-1 byte
            json.dumps({"video": "clips/b.mp4"}).encode(),  # 4
            record("clips/b.mp4", "   "),  # 5
            json.dumps({"caption": "no video"}).encode(),  # 6
            record("../outside.mp4", "climbs out"),  # 7
            record("clips/missing.mp4", "not there"),  # 8
            record("clips/./a.mp4", "same file again"),  # 9
            b'["a list"]',  # 10
            record("clips/c.mp4", "good too"),  # 11
        ],
    )
    entries, problems = load_entries(dataset)
    assert [entry.line for entry in entries] == [1, 11]
    captions_file = dataset.resolve() / "captions.jsonl"
    assert [(problem.path, problem.reason) for problem in problems] == [
        (f"{captions_file}:2", "malformed JSON"),
        (f"{captions_file}:3", "not UTF-8"),
        (f"{captions_file}:4", "missing caption"),
        (f"{captions_file}:5", "empty caption"),
        (f"{captions_file}:6", "missing video field"),
        (f"{captions_file}:7", "path outside dataset"),
        (f"{captions_file}:8", "file not found"),
        (f"{captions_file}:9", "duplicate entry"),
        (f"{captions_file}:10", "malformed JSON"),
    ]
    assert "first listed on line 1" in problems[7].detail
    assert problems[2].detail == "video clips/b.mp4" and problems[3].detail == "video clips/b.mp4, caption '   '"


def test_csv_with_quoted_commas(dataset):
    (dataset / "captions.csv").write_text(
        'video,caption\nclips/a.mp4,"a red, round thing"\nclips/b.mp4\nclips/c.mp4,plain\n', encoding="utf-8"
    )
    entries, problems = load_entries(dataset)
    assert [(entry.video.name, entry.caption, entry.line) for entry in entries] == [
        ("a.mp4", "a red, round thing", 2),
        ("c.mp4", "plain", 4),
    ]
    assert problems == [Problem(f"{dataset.resolve() / 'captions.csv'}:3", "malformed CSV", "expected 2 columns, got 1")]


def test_csv_needs_its_header(dataset):
    (dataset / "captions.csv").write_text("path,text\nclips/a.mp4,x\n")
    entries, problems = load_entries(dataset)
    assert entries == [] and problems[0].reason == "malformed CSV" and "header" in problems[0].detail


def test_missing_or_ambiguous_captions_file(dataset):
    with pytest.raises(FileNotFoundError, match="no captions file"):
        load_entries(dataset)
    write_jsonl(dataset, [record("clips/a.mp4", "x")])
    (dataset / "captions.csv").write_text("video,caption\n")
    with pytest.raises(ValueError, match="both captions.jsonl and captions.csv exist"):
        load_entries(dataset)


def test_unusable_video_path_is_a_problem_not_a_crash(dataset):
    write_jsonl(
        dataset,
        [
            record("clips/a.mp4", "good"),  # 1
            record("clips/b\u0000.mp4", "NUL byte"),  # 2: resolve() raises ValueError
            record("clips/" + "x" * 300 + ".mp4", "name too long"),  # 3: is_file() raises OSError ENAMETOOLONG
            record("clips/c.mp4", "good too"),  # 4
        ],
    )
    entries, problems = load_entries(dataset)
    assert [entry.line for entry in entries] == [1, 4]
    captions_file = dataset.resolve() / "captions.jsonl"
    assert [(problem.path, problem.reason) for problem in problems] == [
        (f"{captions_file}:2", "invalid video path"),
        (f"{captions_file}:3", "invalid video path"),
    ]
    assert problems[0].detail == "embedded null byte: 'clips/b\\x00.mp4'"
    assert problems[1].detail.startswith("File name too long: 'clips/xxx")


def test_csv_quoted_caption_may_span_lines(dataset):
    (dataset / "captions.csv").write_bytes(
        b'video,caption\nclips/a.mp4,"a red circle,\nthen a blue square"\nclips/b.mp4,caf\xe9\nclips/c.mp4,ok\n'
    )
    entries, problems = load_entries(dataset)
    assert [(entry.video.name, entry.caption, entry.line) for entry in entries] == [
        ("a.mp4", "a red circle,\nthen a blue square", 2),
        ("c.mp4", "ok", 5),
    ]
    assert problems == [Problem(f"{dataset.resolve() / 'captions.csv'}:4", "not UTF-8")]


def test_csv_unterminated_quote_is_a_problem_naming_its_line_and_the_rest_still_loads(dataset):
    (dataset / "captions.csv").write_text('video,caption\nclips/a.mp4,ok\nclips/b.mp4,"a red circle\nclips/c.mp4,ok\n')
    entries, problems = load_entries(dataset)
    assert [entry.line for entry in entries] == [2, 4]
    assert [(problem.path, problem.reason) for problem in problems] == [
        (f"{dataset.resolve() / 'captions.csv'}:3", "malformed CSV")
    ]
    assert problems[0].detail.startswith("unterminated quote")


@pytest.mark.parametrize(
    "name, text",
    [
        ("captions.csv", "video,caption\nclips/a.mp4,a\nclips/b.mp4,b\n"),  # Excel's "CSV UTF-8"
        ("captions.jsonl", (record("clips/a.mp4", "a") + b"\n" + record("clips/b.mp4", "b") + b"\n").decode()),
    ],
    ids=["csv", "jsonl"],
)
def test_utf8_byte_order_mark_is_dropped(dataset, name, text):
    (dataset / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
    entries, problems = load_entries(dataset)
    assert problems == []
    assert [(entry.video.name, entry.caption) for entry in entries] == [("a.mp4", "a"), ("b.mp4", "b")]


def test_a_symlinked_clips_folder_is_inside_the_dataset_as_written(tmp_path):
    elsewhere = tmp_path / "big-disk" / "clips"
    elsewhere.mkdir(parents=True)
    (elsewhere / "a.mp4").write_bytes(b"")
    root = tmp_path / "data"
    root.mkdir()
    (root / "clips").symlink_to(elsewhere, target_is_directory=True)
    write_jsonl(root, [record("clips/a.mp4", "a red circle"), record("clips/../../big-disk/clips/a.mp4", "climbs")])
    entries, problems = load_entries(root)
    assert [e.video for e in entries] == [root.resolve() / "clips" / "a.mp4"]  # the path as written, not the target
    assert [(p.path.rsplit(":", 1)[1], p.reason) for p in problems] == [("2", "path outside dataset")]


def test_csv_stray_text_after_a_closing_quote_loads_leniently_as_before(dataset):
    (dataset / "captions.csv").write_text('video,caption\nclips/a.mp4,"a red" circle\nclips/b.mp4,"a blue square" \n'
                                          'clips/c.mp4,ok\n')
    entries, problems = load_entries(dataset)
    assert [(entry.line, entry.caption) for entry in entries] == [(2, "a red circle"), (3, "a blue square"), (4, "ok")]
    assert problems == []
