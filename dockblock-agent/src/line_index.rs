//! Line numbers of byte offsets in a file's text, for messages: one pass
//! over the text, then a binary search per offset. (Counting newlines up to
//! each offset made naming the lines of a 65,535-rule file quadratic.)

pub struct LineIndex {
    /// Byte offset where each line starts; the first is 0.
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> LineIndex {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        LineIndex { starts }
    }

    /// The 1-based line that holds byte `offset` (past the end: the last).
    pub fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_start_after_each_newline() {
        let text = "a\nbc\n\nd";
        let index = LineIndex::new(text);
        let naive = |o: usize| text[..o.min(text.len())].matches('\n').count() + 1;
        for offset in 0..=text.len() + 2 {
            assert_eq!(index.line(offset), naive(offset), "offset {offset}");
        }
        assert_eq!(index.line(0), 1);
        assert_eq!(index.line(1), 1, "the newline belongs to its line");
        assert_eq!(index.line(2), 2);
        assert_eq!(LineIndex::new("").line(0), 1);
    }
}
