//! What a tenant may read of a job's error: the run's own message without the
//! server's paths or native stack frames (those go to the log).

use std::path::Path;

use super::WorkerContext;

/// `message` as the client sees it: paths inside the job's folder and the data
/// directory lose their prefix, any other absolute path keeps only its file name, and
/// libtorch's C++ context (the "Exception raised from …" tail, `frame #` lines) is cut.
pub fn tenant_message(message: &str, work: &Path, state: &WorkerContext) -> String {
    let mut text = cut_native_context(message);
    let prefixes = [work.to_path_buf(), state.data_dir.clone()];
    for prefix in prefixes {
        let prefix = format!("{}/", prefix.display());
        text = text.replace(&prefix, "");
    }
    strip_absolute_paths(&text)
}

/// Drops what libtorch appends to an error: the C++ source location and backtrace.
fn cut_native_context(message: &str) -> String {
    let end = message
        .find("Exception raised from")
        .unwrap_or(message.len());
    message[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("frame #"))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// Replaces every absolute path (a word starting with `/` that has another `/`) by
/// its last component.
fn strip_absolute_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('/') {
        let at_word_start = start == 0
            || rest[..start]
                .chars()
                .last()
                .is_some_and(|c| c.is_whitespace() || "'\"`(=:".contains(c));
        let end = rest[start..]
            .find(|c: char| c.is_whitespace() || "'\"`),;".contains(c))
            .map_or(rest.len(), |e| start + e);
        let word = &rest[start..end];
        out.push_str(&rest[..start]);
        if at_word_start && word[1..].contains('/') {
            out.push_str(word.trim_end_matches('/').rsplit('/').next().unwrap_or(""));
        } else {
            out.push_str(word);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_frames_and_paths_are_removed() {
        let raw = "cannot prune '/srv/effp/scratch/.tmpA1/model.onnx': Torch error: \
                   DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes.\n\
                   Exception raised from allocate_impl at /pytorch/c10/core/impl/alloc_cpu.cpp:55\n\
                   frame #0: c10::Error::Error(...) + 0x9a (0x7f in /venv/lib/libc10.so)";
        let shown = cut_native_context(raw);
        assert!(!shown.contains("Exception raised"), "{shown}");
        assert!(!shown.contains("frame #"), "{shown}");
        let shown = strip_absolute_paths(&shown);
        assert_eq!(
            shown,
            "cannot prune 'model.onnx': Torch error: DefaultCPUAllocator: can't allocate memory: \
             you tried to allocate 123 bytes."
        );
    }

    #[test]
    fn ratios_and_relative_names_stay() {
        let text = "FLOPs 1/2 of 'images/val/a.jpg' at 3/4";
        assert_eq!(strip_absolute_paths(text), text);
        assert_eq!(
            strip_absolute_paths("read /a/b/c.txt: no (see /tmp/x/)"),
            "read c.txt: no (see x)"
        );
    }
}
