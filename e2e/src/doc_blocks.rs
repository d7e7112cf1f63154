//! Code blocks of a Markdown page that a test runs as written.
//!
//! A block is marked by an HTML comment on the line just before its opening fence, which
//! Markdown renderers hide:
//!
//! ````markdown
//! <!-- run: quickstart -->
//! ```sh
//! kubectl get smtpr
//! ```
//! ````
//!
//! [`marked_blocks`] returns the blocks marked with one name, in the order of the page. A marker
//! not followed by a fence, or a fence never closed, is an error rather than a block silently
//! skipped: a guide whose test stops running its commands must fail too.

/// One marked fenced code block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocBlock {
    /// The first word of the fence's info string (`sh` for ```` ```sh ````), empty if none.
    pub lang: String,
    /// The block's lines, each ending in `\n`, without the fences.
    pub code: String,
    /// The 1-based line of the opening fence, for messages.
    pub line: usize,
}

/// What is wrong with a page's markers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocBlockError {
    #[error("line {line}: marker <!-- run: {name} --> is not followed by a fenced code block")]
    MarkerWithoutBlock { name: String, line: usize },
    #[error("line {line}: the code block opened here is never closed")]
    Unclosed { line: usize },
}

/// `Some(name)` when `line` is a marker `<!-- run: NAME -->`.
fn marker(line: &str) -> Option<&str> {
    let inner = line
        .trim()
        .strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim()
        .strip_prefix("run:")?
        .trim();
    (!inner.is_empty()).then_some(inner)
}

/// An opening or closing fence: its indentation, character, length and info string.
struct Fence<'a> {
    indent: usize,
    ch: char,
    len: usize,
    info: &'a str,
}

fn fence(line: &str) -> Option<Fence<'_>> {
    let rest = line.trim_start_matches(' ');
    let indent = line.len() - rest.len();
    let ch = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = rest.chars().take_while(|c| *c == ch).count();
    (indent <= 3 && len >= 3).then(|| Fence {
        indent,
        ch,
        len,
        info: rest[len..].trim(),
    })
}

/// Whether `line` closes a block opened by `open`: the same character, at least as many, and
/// nothing after it.
fn closes(open: &Fence<'_>, line: &str) -> bool {
    fence(line).is_some_and(|f| f.ch == open.ch && f.len >= open.len && f.info.is_empty())
}

/// The fenced code blocks of `markdown` marked `<!-- run: NAME -->` with `name`, in order.
///
/// Markers inside a code block are code, not markers. A block indented (in a list item) has
/// that indentation removed from its lines, as Markdown does.
///
/// # Errors
///
/// A marker with this name whose next line is not an opening fence, or a block never closed.
pub fn marked_blocks(markdown: &str, name: &str) -> Result<Vec<DocBlock>, DocBlockError> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(open) = fence(line) {
            // Skip over any block, marked or not, so its contents are never read as markers.
            let end = (i + 1..lines.len())
                .find(|&j| closes(&open, lines[j]))
                .ok_or(DocBlockError::Unclosed { line: i + 1 })?;
            let wanted = i > 0 && marker(lines[i - 1]) == Some(name);
            if wanted {
                let code = lines[i + 1..end]
                    .iter()
                    .map(|l| {
                        let spaces = l.len() - l.trim_start_matches(' ').len();
                        format!("{}\n", &l[spaces.min(open.indent)..])
                    })
                    .collect();
                let lang = open
                    .info
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string();
                blocks.push(DocBlock {
                    lang,
                    code,
                    line: i + 1,
                });
            }
            i = end + 1;
            continue;
        }
        if marker(line) == Some(name) && lines.get(i + 1).and_then(|l| fence(l)).is_none() {
            return Err(DocBlockError::MarkerWithoutBlock {
                name: name.to_string(),
                line: i + 1,
            });
        }
        i += 1;
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# Quick start

<!-- run: quickstart -->
```sh
kubectl create namespace mail
```

Not run:

```sh
rm -rf /
```

<!-- run: other -->
```sh
echo other
```

1. In a list:

   <!-- run: quickstart -->
   ````sh
   cat <<EOF
   ```
   <!-- run: quickstart -->
   EOF
   ````

<!-- run: quickstart -->
~~~
kubectl get smtpr
~~~
";

    #[test]
    fn extracts_the_marked_blocks_of_one_name_in_order() {
        let blocks = marked_blocks(PAGE, "quickstart").unwrap();
        assert_eq!(
            blocks,
            vec![
                DocBlock {
                    lang: "sh".into(),
                    code: "kubectl create namespace mail\n".into(),
                    line: 4,
                },
                DocBlock {
                    lang: "sh".into(),
                    code: "cat <<EOF\n```\n<!-- run: quickstart -->\nEOF\n".into(),
                    line: 22,
                },
                DocBlock {
                    lang: String::new(),
                    code: "kubectl get smtpr\n".into(),
                    line: 30,
                },
            ]
        );
        let other = marked_blocks(PAGE, "other").unwrap();
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].code, "echo other\n");
        assert_eq!(marked_blocks(PAGE, "missing").unwrap(), vec![]);
    }

    #[test]
    fn a_marker_without_a_block_is_an_error() {
        let page = "<!-- run: quickstart -->\n\n```sh\necho hi\n```\n";
        assert_eq!(
            marked_blocks(page, "quickstart"),
            Err(DocBlockError::MarkerWithoutBlock {
                name: "quickstart".into(),
                line: 1,
            })
        );
        // A marker of another name is not this test's business.
        assert_eq!(marked_blocks(page, "other"), Ok(vec![]));
        let last = "text\n<!-- run: quickstart -->\n";
        assert!(marked_blocks(last, "quickstart").is_err());
    }

    #[test]
    fn an_unclosed_block_is_an_error() {
        let page = "<!-- run: quickstart -->\n```sh\necho hi\n``` not a close\n";
        assert_eq!(
            marked_blocks(page, "quickstart"),
            Err(DocBlockError::Unclosed { line: 2 })
        );
    }

    #[test]
    fn markers_tolerate_spacing_but_not_other_names() {
        assert_eq!(marker("<!--run:quickstart-->"), Some("quickstart"));
        assert_eq!(marker("  <!-- run:  quickstart  -->  "), Some("quickstart"));
        assert_eq!(marker("<!-- run: -->"), None);
        assert_eq!(marker("<!-- quickstart -->"), None);
    }
}
