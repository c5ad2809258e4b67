//! Views of the step's row-major buffers, made so that cblas always gets
//! them: standard strides, never the zero stride ndarray gives a slice of a
//! one-column matrix (which cblas refuses, and ndarray then silently
//! multiplies with its own slower code).

use super::Layout;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use std::ops::Range;

pub(super) fn slice_mut<'a, F>(a: &'a mut ArrayViewMut2<'_, F>) -> &'a mut [F] {
    a.as_slice_mut()
        .expect("blocks are contiguous row ranges of row-major buffers")
}

pub(super) fn slice<'a, F>(a: &'a ArrayView2<'_, F>) -> &'a [F] {
    a.as_slice()
        .expect("blocks are contiguous row ranges of row-major buffers")
}

/// Rows `r` of a row-major matrix as a view with standard strides. (An
/// ndarray slice of a one-column matrix gets a zero column stride, which
/// cblas refuses and ndarray then silently multiplies with its own slower
/// code; a view made from the rows' memory keeps strides (cols, 1).)
pub(super) fn rows_of<F>(a: &Array2<F>, r: Range<usize>) -> ArrayView2<'_, F> {
    let cols = a.ncols();
    ArrayView2::from_shape((r.len(), cols), &flat(a)[r.start * cols..r.end * cols])
        .expect("rows of a row-major matrix")
}

/// [`rows_of`], mutable. Made from the buffer's pointer, so that no
/// reference to the other rows is formed: in an exchanged step
/// ([`gradients_exchanged`]) another process may be reading rows already
/// handed to the [`Exchange`].
pub(super) fn rows_of_mut<F>(a: &mut Array2<F>, r: Range<usize>) -> ArrayViewMut2<'_, F> {
    let cols = a.ncols();
    assert!(
        a.is_standard_layout() && r.start <= r.end && r.end <= a.nrows(),
        "rows {r:?} of a {}×{cols} row-major matrix",
        a.nrows()
    );
    // SAFETY: rows r of a contiguous row-major buffer (checked above),
    // borrowed exclusively for the view's lifetime.
    unsafe { ArrayViewMut2::from_shape_ptr((r.len(), cols), a.as_mut_ptr().add(r.start * cols)) }
}

/// A block's B×H activations (h or g_hrelu) in a buffer sized for the
/// plan's largest block: in [`Layout::Rows`] its first B rows; in
/// [`Layout::Units`] its first H·B elements as an H×B matrix, viewed
/// transposed (column-major B×H, strides (1, B)).
pub(super) fn activations_mut<F>(
    a: &mut Array2<F>,
    rows: usize,
    hidden: usize,
    layout: Layout,
) -> ArrayViewMut2<'_, F> {
    match layout {
        Layout::Rows => rows_of_mut(a, 0..rows),
        Layout::Units => {
            let all = a.as_slice_mut().expect("buffers are contiguous");
            ArrayViewMut2::from_shape((hidden, rows), &mut all[..hidden * rows])
                .expect("a block's share of its buffer")
                .reversed_axes()
        }
    }
}

/// A contiguous view's elements in memory order, whatever its layout
/// (row-major, or a transposed view of row-major memory).
pub(super) fn memory<'a, F>(a: &'a ArrayViewMut2<'_, F>) -> &'a [F] {
    a.as_slice_memory_order()
        .expect("activations are contiguous in memory")
}

/// [`memory`], mutable.
pub(super) fn memory_mut<'a, F>(a: &'a mut ArrayViewMut2<'_, F>) -> &'a mut [F] {
    a.as_slice_memory_order_mut()
        .expect("activations are contiguous in memory")
}

/// Columns `c` of rows `r` of a row-major matrix, as a strided view
/// (strides (cols, 1); its transpose goes to cblas as TransA with
/// lda = cols).
pub(super) fn columns_of<F>(a: &Array2<F>, r: Range<usize>, c: Range<usize>) -> ArrayView2<'_, F> {
    use ndarray::ShapeBuilder;
    let cols = a.ncols();
    assert!(!r.is_empty() && !c.is_empty() && c.end <= cols);
    let start = r.start * cols + c.start;
    let len = (r.len() - 1) * cols + c.len();
    ArrayView2::from_shape(
        (r.len(), c.len()).strides((cols, 1)),
        &flat(a)[start..start + len],
    )
    .expect("a column range of a row-major matrix")
}

/// A bias vector's values (bias vectors are made contiguous).
pub(super) fn flat1<F>(a: &ndarray::Array1<F>) -> &[F] {
    a.as_slice().expect("bias vectors are contiguous")
}

/// [`flat1`], mutable.
pub(super) fn flat1_mut<F>(a: &mut ndarray::Array1<F>) -> &mut [F] {
    a.as_slice_mut().expect("bias vectors are contiguous")
}

pub(super) fn flat<F>(a: &Array2<F>) -> &[F] {
    a.as_slice().expect("buffers are contiguous and row-major")
}

pub(super) fn flat_mut<F>(a: &mut Array2<F>) -> &mut [F] {
    a.as_slice_mut()
        .expect("buffers are contiguous and row-major")
}
