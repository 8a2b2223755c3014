//! Keeping what untrusted input makes grow within fixed bounds: the few entries wanted out of
//! a directory of any size ([`Smallest`]), and samples of names sized for a Kubernetes status
//! ([`json_len`], [`push_sample`], [`sample`]).
//!
//! A Worker's files are written by the worker (or anyone with access to its share): a
//! directory may hold millions of entries and a file name may be 255 bytes that JSON escapes
//! six-fold (`\u0001`). Counts stay exact; the names kept are bounded in number and in bytes.

use std::collections::BinaryHeap;

/// The `cap` smallest items offered, in a max-heap of at most `cap` items: memory does not
/// grow with how many are offered.
#[derive(Debug)]
pub struct Smallest<T: Ord> {
    heap: BinaryHeap<T>,
    cap: usize,
}

impl<T: Ord> Smallest<T> {
    pub fn new(cap: usize) -> Self {
        Self {
            heap: BinaryHeap::with_capacity(cap.min(1024) + 1),
            cap,
        }
    }

    /// Keep `item` if it is among the `cap` smallest so far.
    pub fn offer(&mut self, item: T) {
        if self.cap == 0 {
            return;
        }
        if self.heap.len() < self.cap {
            self.heap.push(item);
        } else if self.heap.peek().is_some_and(|top| item < *top) {
            self.heap.pop();
            self.heap.push(item);
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The kept items, smallest first.
    pub fn into_sorted_vec(self) -> Vec<T> {
        self.heap.into_sorted_vec()
    }
}

/// At most `max_chars` characters of `s`, marked with `…` when cut.
pub fn clip(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Bytes `s` takes as a JSON string in a list: quotes, escapes and the separating comma.
pub fn json_len(s: &str) -> usize {
    // Escapes: `\"`, `\\` and the short forms take 2 bytes; other controls `\u00XX` take 6.
    let escaped: usize = s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum();
    escaped + 3
}

/// Append `item` to `list` when the list stays within `max_items` and `max_bytes` (as JSON);
/// `false` when it was left out.
pub fn push_sample(
    list: &mut Vec<String>,
    item: String,
    max_items: usize,
    max_bytes: usize,
) -> bool {
    let used: usize = list.iter().map(|s| json_len(s)).sum();
    if list.len() >= max_items || used + json_len(&item) > max_bytes {
        return false;
    }
    list.push(item);
    true
}

/// The first items that fit in `max_items` and `max_bytes` (as JSON), in order; an item too
/// large for what is left is skipped, later smaller ones may still fit.
pub fn sample<'a>(
    items: impl IntoIterator<Item = &'a String>,
    max_items: usize,
    max_bytes: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut used = 0;
    for item in items {
        if out.len() >= max_items {
            break;
        }
        let len = json_len(item);
        if used + len <= max_bytes {
            used += len;
            out.push(item.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_keeps_the_cap_smallest_in_order() {
        let mut s = Smallest::new(3);
        for i in [5, 1, 9, 3, 7, 2, 8] {
            s.offer(i);
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.into_sorted_vec(), [1, 2, 3]);
        let mut none = Smallest::new(0);
        none.offer(1);
        assert!(none.is_empty());
    }

    #[test]
    fn json_len_is_what_serde_writes() {
        for s in [
            "",
            "a.json",
            "caf\u{e9}",
            "q\"b\\",
            "\u{1}\u{1f}\n\t",
            &"\u{1}".repeat(255),
        ] {
            let list = serde_json::to_string(&vec![s, s]).unwrap();
            // `[a,b]`: two items, one comma, two brackets.
            assert_eq!(2 * json_len(s) + 1, list.len(), "{s:?}");
        }
    }

    #[test]
    fn samples_are_bounded_in_items_and_bytes() {
        let mut list = Vec::new();
        assert!(push_sample(&mut list, "a".repeat(10), 5, 30));
        assert!(!push_sample(&mut list, "b".repeat(20), 5, 30));
        assert!(push_sample(&mut list, "c".repeat(10), 5, 30));
        assert_eq!(list.len(), 2);
        let items: Vec<String> = ["x".repeat(100), "y".into(), "z".into(), "w".into()].into();
        assert_eq!(sample(&items, 2, 50), ["y", "z"]);
    }
}
