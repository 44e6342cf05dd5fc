//! Host-side planning of a CUDA forward step: which rows go to the split-K
//! decode kernel and which to the tiled prefill kernel, their padded block
//! tables and cache slots, flattened into the i32 arrays the kernels read.
//! Plain Rust (no CUDA), so CI tests it without the feature.

use crate::model::{ModelError, SeqInput};

/// Host-side description of one forward step, flattened into i32 arrays that go
/// to the device in one copy.
#[derive(Debug, Default, PartialEq)]
pub struct StepPlan {
    /// Token id per row.
    pub ids: Vec<i32>,
    /// Position per row.
    pub positions: Vec<i32>,
    /// Cache slot per row.
    pub slots: Vec<i32>,
    /// Last row of each sequence (gets logits).
    pub last_rows: Vec<i32>,
    /// Decode sequences (one new token): q/out row, context length incl. the new token.
    pub dec_rows: Vec<i32>,
    /// Context length (incl. the new token) per decode sequence.
    pub dec_ctx: Vec<i32>,
    /// Decode block tables, `dec_bt_stride` apart.
    pub dec_tables: Vec<i32>,
    /// Decode block-table row length.
    pub dec_bt_stride: usize,
    /// Longest decode context.
    pub dec_max_ctx: usize,
    /// Prefill sequences (several new tokens): first row, start position, new tokens.
    pub pf_row: Vec<i32>,
    /// Start position per prefill sequence.
    pub pf_start: Vec<i32>,
    /// New tokens per prefill sequence.
    pub pf_new: Vec<i32>,
    /// Prefill block tables, `pf_bt_stride` apart.
    pub pf_tables: Vec<i32>,
    /// Prefill block-table row length.
    pub pf_bt_stride: usize,
    /// Longest prefill chunk.
    pub pf_max_new: usize,
}

fn i32_of(x: usize, what: &str) -> Result<i32, ModelError> {
    i32::try_from(x).map_err(|_| ModelError::InvalidInput(format!("{what} {x} exceeds i32")))
}

impl StepPlan {
    /// Plans a batch: which rows are decodes (split-K kernel) and which are
    /// prefill chunks (tiled causal kernel), with padded block tables.
    pub fn new(batch: &[SeqInput], block_size: usize) -> Result<Self, ModelError> {
        let mut p = StepPlan::default();
        let blocks_for = |s: &SeqInput| (s.start_pos + s.tokens.len()).div_ceil(block_size);
        p.dec_bt_stride = batch
            .iter()
            .filter(|s| s.tokens.len() == 1)
            .map(blocks_for)
            .max()
            .unwrap_or(0);
        p.pf_bt_stride = batch
            .iter()
            .filter(|s| s.tokens.len() > 1)
            .map(blocks_for)
            .max()
            .unwrap_or(0);
        let mut row = 0usize;
        for s in batch {
            let n = s.tokens.len();
            let nb = blocks_for(s);
            for (i, &t) in s.tokens.iter().enumerate() {
                let pos = s.start_pos + i;
                p.ids.push(i32_of(t as usize, "token id")?);
                p.positions.push(i32_of(pos, "position")?);
                let slot = s.block_table[pos / block_size] as usize * block_size + pos % block_size;
                p.slots.push(i32_of(slot, "slot")?);
            }
            let (tables, stride) = if n == 1 {
                p.dec_rows.push(i32_of(row, "row")?);
                p.dec_ctx.push(i32_of(s.start_pos + 1, "context")?);
                p.dec_max_ctx = p.dec_max_ctx.max(s.start_pos + 1);
                (&mut p.dec_tables, p.dec_bt_stride)
            } else {
                p.pf_row.push(i32_of(row, "row")?);
                p.pf_start.push(i32_of(s.start_pos, "start")?);
                p.pf_new.push(i32_of(n, "chunk")?);
                p.pf_max_new = p.pf_max_new.max(n);
                (&mut p.pf_tables, p.pf_bt_stride)
            };
            for j in 0..stride {
                // Padding entries are never read: every kernel stops at the sequence's context.
                let b = if j < nb { s.block_table[j] } else { 0 };
                tables.push(i32_of(b as usize, "block id")?);
            }
            row += n;
            p.last_rows.push(i32_of(row - 1, "row")?);
        }
        Ok(p)
    }

    /// All arrays back to back, with each one's offset (in i32s).
    pub fn pack(&self) -> (Vec<i32>, [usize; 13]) {
        let parts: [&Vec<i32>; 13] = [
            &self.ids,
            &self.positions,
            &self.slots,
            &self.last_rows,
            &self.dec_rows,
            &self.dec_ctx,
            &self.dec_tables,
            &self.pf_row,
            &self.pf_start,
            &self.pf_new,
            &self.pf_tables,
            &self.ids,
            &self.ids,
        ];
        let mut all = Vec::new();
        let mut offs = [0usize; 13];
        for (i, p) in parts.iter().enumerate().take(11) {
            // 16-byte alignment of every array keeps vector loads legal should a kernel use them.
            while all.len() % 4 != 0 {
                all.push(0);
            }
            offs[i] = all.len();
            all.extend_from_slice(p);
        }
        (all, offs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SeqInput;

    #[test]
    fn plan_splits_decodes_from_prefills() {
        let t1 = [5u32];
        let t2 = [1u32, 2, 3];
        let batch = [
            SeqInput {
                tokens: &t1,
                start_pos: 9,
                block_table: &[4, 2, 7],
            },
            SeqInput {
                tokens: &t2,
                start_pos: 2,
                block_table: &[1, 3],
            },
        ];
        let p = StepPlan::new(&batch, 4).unwrap();
        assert_eq!(p.ids, vec![5, 1, 2, 3]);
        assert_eq!(p.positions, vec![9, 2, 3, 4]);
        assert_eq!(p.slots, vec![7 * 4 + 1, 4 + 2, 4 + 3, 3 * 4]);
        assert_eq!(p.last_rows, vec![0, 3]);
        assert_eq!((p.dec_rows.clone(), p.dec_ctx.clone()), (vec![0], vec![10]));
        assert_eq!(p.dec_tables, vec![4, 2, 7]);
        assert_eq!(
            (p.pf_row.clone(), p.pf_start.clone(), p.pf_new.clone()),
            (vec![1], vec![2], vec![3])
        );
        assert_eq!(p.pf_tables, vec![1, 3]);
        let (all, offs) = p.pack();
        assert_eq!(all[offs[2]..offs[2] + 4], [29, 6, 7, 12]);
        assert!(offs.iter().take(11).all(|o| o % 4 == 0));
    }
}
