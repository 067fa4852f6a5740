//! MONAI's `KeepLargestConnectedComponentd` on a label map: for each applied label (or
//! for their union when not `independent`), voxels outside the largest connected
//! component become background. Components are found by a flood fill in scan order,
//! so among equally large components the first one met is kept, as scikit-image's
//! labelling (which MONAI uses) numbers them.

/// Keeps the largest component of each label in `applied` (all non-zero labels when
/// empty) of a `[d, h, w]` label volume, in place. `connectivity` 1, 2 or 3 counts
/// face, edge or corner neighbours (6, 18 or 26 in 3D; MONAI's default is 3).
pub fn keep_largest(
    labels: &mut [u8],
    dims: [usize; 3],
    applied: &[u8],
    independent: bool,
    connectivity: u8,
) {
    let chosen: Vec<u8> = if applied.is_empty() {
        let mut seen = [false; 256];
        labels.iter().for_each(|&v| seen[v as usize] = true);
        (1..=255u8).filter(|&v| seen[v as usize]).collect()
    } else {
        applied.to_vec()
    };
    if independent {
        for &l in &chosen {
            keep_largest_of(labels, dims, &|v| v == l, connectivity);
        }
    } else {
        keep_largest_of(labels, dims, &|v| chosen.contains(&v), connectivity);
    }
}

fn keep_largest_of(labels: &mut [u8], dims: [usize; 3], fg: &dyn Fn(u8) -> bool, connectivity: u8) {
    let offsets = neighbour_offsets(connectivity);
    // 0: unvisited; otherwise the component's number (1-based).
    let mut comp = vec![0u32; labels.len()];
    let (mut best, mut best_size, mut next) = (0u32, 0usize, 0u32);
    let mut stack = Vec::new();
    for start in 0..labels.len() {
        if comp[start] != 0 || !fg(labels[start]) {
            continue;
        }
        next += 1;
        let size = flood(&mut comp, next, start, dims, &offsets, &mut stack, &|j| {
            fg(labels[j])
        });
        if size > best_size {
            (best, best_size) = (next, size);
        }
    }
    for (v, &c) in labels.iter_mut().zip(&comp) {
        if c != 0 && c != best {
            *v = 0;
        }
    }
}

/// The voxels of a `[d, h, w]` volume connected to voxel `seed` through voxels where
/// `inside` holds (`connectivity` as in [`keep_largest`]); none when `seed` is not
/// inside itself.
pub fn connected_to(
    dims: [usize; 3],
    seed: usize,
    connectivity: u8,
    inside: &dyn Fn(usize) -> bool,
) -> Vec<bool> {
    let mut comp = vec![0u32; dims.iter().product()];
    if inside(seed) {
        let offsets = neighbour_offsets(connectivity);
        flood(&mut comp, 1, seed, dims, &offsets, &mut Vec::new(), inside);
    }
    comp.into_iter().map(|c| c != 0).collect()
}

/// The neighbours' offsets for `connectivity` 1, 2 or 3 (faces, edges, corners), in
/// scan order.
pub(crate) fn neighbour_offsets(connectivity: u8) -> Vec<[isize; 3]> {
    (-1..=1)
        .flat_map(|z| (-1..=1).flat_map(move |y| (-1..=1).map(move |x| [z, y, x])))
        .filter(|o: &[isize; 3]| {
            let n = o.iter().filter(|&&c| c != 0).count();
            n > 0 && n <= connectivity.clamp(1, 3) as usize
        })
        .collect()
}

/// Marks `start` and every unmarked voxel reachable from it through voxels where
/// `inside` holds with `mark` in `comp`; returns how many it marked. `stack` is scratch
/// space, reused across calls.
fn flood(
    comp: &mut [u32],
    mark: u32,
    start: usize,
    dims: [usize; 3],
    offsets: &[[isize; 3]],
    stack: &mut Vec<usize>,
    inside: &dyn Fn(usize) -> bool,
) -> usize {
    let [d, h, w] = dims;
    comp[start] = mark;
    stack.push(start);
    let mut size = 0;
    while let Some(i) = stack.pop() {
        size += 1;
        let (z, y, x) = (
            (i / (h * w)) as isize,
            (i / w % h) as isize,
            (i % w) as isize,
        );
        for o in offsets {
            let (nz, ny, nx) = (z + o[0], y + o[1], x + o[2]);
            if nz < 0
                || ny < 0
                || nx < 0
                || nz >= d as isize
                || ny >= h as isize
                || nx >= w as isize
            {
                continue;
            }
            let j = (nz as usize * h + ny as usize) * w + nx as usize;
            if comp[j] == 0 && inside(j) {
                comp[j] = mark;
                stack.push(j);
            }
        }
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_largest_component_per_label() {
        // 1×1×9 line: label 1 in runs of 2 and 3, label 2 in runs of 1 and 1.
        let mut v = vec![1, 1, 0, 2, 0, 1, 1, 1, 2];
        keep_largest(&mut v, [1, 1, 9], &[], true, 3);
        assert_eq!(v, vec![0, 0, 0, 2, 0, 1, 1, 1, 0]);
        // Union of labels 1 and 2: the run 1,1,2 (3 voxels) beats 1,1 (2 voxels).
        let mut v = vec![1, 1, 0, 1, 1, 2, 0, 0, 0];
        keep_largest(&mut v, [1, 1, 9], &[1, 2], false, 3);
        assert_eq!(v, vec![0, 0, 0, 1, 1, 2, 0, 0, 0]);
    }

    #[test]
    fn connectivity_decides_whether_diagonals_join() {
        // Two voxels touching at a corner plus a lone pair elsewhere in a 2×2×4 volume.
        let mut diag = vec![0u8; 16];
        diag[0] = 1; // (0,0,0)
        diag[8 + 4 + 1] = 1; // (1,1,1)
        diag[3] = 1;
        diag[7] = 1; // (0,0,3),(0,1,3): a face-connected pair
        let mut full = diag.clone();
        keep_largest(&mut full, [2, 2, 4], &[1], true, 3);
        // With corners, both pairs have two voxels: the first one in scan order stays.
        assert_eq!(full.iter().filter(|&&v| v == 1).count(), 2);
        assert_eq!(full[0], 1);
        let mut faces = diag.clone();
        keep_largest(&mut faces, [2, 2, 4], &[1], true, 1);
        assert_eq!(faces[3] + faces[7], 2);
        assert_eq!(faces[0], 0);
    }
}
