//! Spreading a scan's cells over partitions (one node's bees) or tasks (a swarm's nodes).
//!
//! Whole cells when they spread evenly: a partition, or a task on another node, then owns its
//! cells and reads (and caches) each one once. When whole cells would leave one group much
//! heavier than the rest — fewer cells than groups, or one large cell among small ones — cells
//! are cut by byte range instead, which the Parquet reader resolves to whole row groups.

use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileGroupPartitioner};

/// Whole cells are kept over one node's partitions when the heaviest group is at most this much
/// above the mean.
const EVEN_ENOUGH: f64 = 1.15;

/// `files` over at most `n` groups of about equal bytes (whole cells where even enough, else
/// byte ranges of at least `min_split_bytes` in total). Never empty: no files give one empty
/// group, since operators above a scan (a sort, a join's build side) need a partition.
pub fn spread_cells(
    files: Vec<PartitionedFile>,
    n: usize,
    min_split_bytes: usize,
) -> Vec<FileGroup> {
    spread_cells_within(files, n, min_split_bytes, EVEN_ENOUGH)
}

/// [`spread_cells`] keeping whole cells only while the heaviest group is at most `even_enough`
/// times the mean (1.0: always cut to equal byte ranges when whole cells are uneven at all).
pub fn spread_cells_within(
    files: Vec<PartitionedFile>,
    n: usize,
    min_split_bytes: usize,
    even_enough: f64,
) -> Vec<FileGroup> {
    let n = n.max(1);
    let total: u64 = files.iter().map(|f| f.object_meta.size).sum();
    let whole = whole_cells(files.clone(), n);
    let heaviest = whole
        .iter()
        .map(|g| g.iter().map(|f| f.object_meta.size).sum::<u64>())
        .max()
        .unwrap_or(0);
    let even = heaviest as f64 <= even_enough * total as f64 / n as f64;
    if n == 1 || files.is_empty() || (whole.len() == n && even) {
        return whole;
    }
    match FileGroupPartitioner::new()
        .with_target_partitions(n)
        .with_repartition_file_min_size(min_split_bytes)
        .repartition_file_groups(&[FileGroup::new(files)])
    {
        Some(groups) if !groups.is_empty() => groups,
        _ => whole,
    }
}

/// Whole files over `n` groups with about equal bytes (largest first into the lightest group).
fn whole_cells(mut files: Vec<PartitionedFile>, n: usize) -> Vec<FileGroup> {
    let n = n.max(1).min(files.len().max(1));
    files.sort_by_key(|f| std::cmp::Reverse(f.object_meta.size));
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for f in files {
        let lightest = groups
            .iter_mut()
            .min_by_key(|(bytes, _)| *bytes)
            .expect("at least one group");
        lightest.0 += f.object_meta.size;
        lightest.1.push(f);
    }
    let groups: Vec<FileGroup> = groups
        .into_iter()
        .filter(|(_, g)| !g.is_empty())
        .map(|(_, g)| FileGroup::new(g))
        .collect();
    match groups.is_empty() {
        true => vec![FileGroup::new(Vec::new())],
        false => groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(sizes: &[u64]) -> Vec<PartitionedFile> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| PartitionedFile::new(format!("f/part-{i}.parquet"), s))
            .collect()
    }

    fn shape(groups: &[FileGroup]) -> Vec<(usize, u64, bool)> {
        groups
            .iter()
            .map(|g| {
                let bytes = g
                    .iter()
                    .map(|f| match &f.range {
                        Some(r) => (r.end - r.start) as u64,
                        None => f.object_meta.size,
                    })
                    .sum();
                (g.len(), bytes, g.iter().any(|f| f.range.is_some()))
            })
            .collect()
    }

    #[test]
    fn whole_cells_when_they_spread_evenly() {
        // Seven cells of 32 MiB and a tail: 4 + 4 cells, nothing cut.
        let mib = 1 << 20;
        let mut sizes = vec![32 * mib; 7];
        sizes.push(18 * mib);
        let got = shape(&spread_cells(cells(&sizes), 2, 4 * mib as usize));
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|(_, _, ranged)| !ranged), "{got:?}");
        assert_eq!(got.iter().map(|g| g.0).sum::<usize>(), 8);
    }

    #[test]
    fn uneven_cells_are_cut_by_range() {
        let mib = 1 << 20;
        // One cell for two groups, and three big cells with a small one: both uneven as whole
        // cells, so both are cut into byte ranges of equal size.
        for sizes in [
            vec![200 * mib],
            vec![64 * mib, 64 * mib, 64 * mib, 18 * mib],
        ] {
            let total: u64 = sizes.iter().sum();
            let got = shape(&spread_cells(cells(&sizes), 2, 4 * mib as usize));
            assert_eq!(got.len(), 2, "{sizes:?}");
            assert!(got.iter().any(|(_, _, ranged)| *ranged));
            assert!(
                got.iter().all(|(_, b, _)| b.abs_diff(total / 2) <= 1),
                "{got:?}"
            );
        }
    }

    #[test]
    fn a_tighter_bound_cuts_what_partitions_keep_whole() {
        // TPC-H SF1 lineitem: six cells of 32 MiB and one of 18 MiB. Whole cells over two groups
        // are 114 against 96 MiB, 7 % above the mean: whole for partitions, cut for tasks.
        let mib = 1 << 20;
        let mut sizes = vec![32 * mib; 6];
        sizes.push(18 * mib);
        let total: u64 = sizes.iter().sum();
        let whole = shape(&spread_cells(cells(&sizes), 2, 4 * mib as usize));
        assert!(whole.iter().all(|(_, _, ranged)| !ranged), "{whole:?}");
        let cut = shape(&spread_cells_within(
            cells(&sizes),
            2,
            4 * mib as usize,
            1.03,
        ));
        assert_eq!(cut.len(), 2);
        assert!(
            cut.iter().all(|(_, b, _)| b.abs_diff(total / 2) <= 1),
            "{cut:?}"
        );
        // Even cells stay whole under the tighter bound too.
        let even = shape(&spread_cells_within(
            cells(&[32 * mib; 6]),
            2,
            4 * mib as usize,
            1.03,
        ));
        assert!(
            even.iter().all(|(n, _, ranged)| *n == 3 && !ranged),
            "{even:?}"
        );
    }

    #[test]
    fn small_or_no_cells_stay_whole() {
        // Below the split size a cell is not cut, however uneven.
        let got = shape(&spread_cells(cells(&[1000]), 4, 4 << 20));
        assert_eq!(got, vec![(1, 1000, false)]);
        let got = spread_cells(Vec::new(), 4, 4 << 20);
        assert_eq!(got.len(), 1);
        assert!(got[0].is_empty());
    }
}
