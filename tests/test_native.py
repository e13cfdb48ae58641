"""The C kernel for packed attention equals the torch path it replaces."""

import types

import pytest
import torch

from reverie.fast import attention, native


@pytest.fixture
def kernel():
    if native.compiler() is None:
        pytest.skip("no C compiler on this machine")
    fn = native.kernel()
    assert fn is not None, "a C compiler is installed but the packed-attention kernel did not build"
    return fn


def packed_attention(layout, q, k, v, monkeypatch, use_kernel: bool, **options):
    """Both leading parents' layer (which stores their keys and values) and a later pass that reads them."""
    monkeypatch.setenv("REVERIE_NATIVE", "1" if use_kernel else "0")
    module = types.SimpleNamespace(layer_idx=0, **{attention.LAYOUT: layout})
    return attention.packed_attention(module, q, k, v, None, scaling=0.3, **options)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "options", [{}, {"softcap": 2.0}, {"sliding_window": 3}, {"softcap": 1.5, "sliding_window": 5}]
)
def test_kernel_equals_torch_packed_attention(kernel, dtype, options, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    n, parents, heads, kv_heads, d = 9, 3, 6, 2, 16
    parent = torch.randint(parents, (40,), generator=gen)
    pos = torch.randint(n, (40,), generator=gen)
    layouts = [attention.Packed({}, parent[:25], pos[:25], n, lead=parents)]  # parents lead: keys and values kept
    layouts.append(attention.Packed(layouts[0].kv, parent[25:], pos[25:], n))  # a second pass reads them
    for layout in layouts:
        T = len(layout.entry)
        # the attention interface's layout: [1, heads, T, d] views of [1, T, heads, d] projections
        q = torch.randn(1, T, heads, d, generator=gen).to(dtype).transpose(1, 2)
        k, v = (torch.randn(1, T, kv_heads, d, generator=gen).to(dtype).transpose(1, 2) for _ in range(2))
        expected = packed_attention(layout, q, k, v, monkeypatch, False, **options)
        got = packed_attention(layout, q, k, v, monkeypatch, True, **options)
        assert got.shape == expected.shape == (1, T, heads, d) and got.dtype == dtype
        tolerance = 1e-5 if dtype == torch.float32 else 1e-2
        assert torch.allclose(got.float(), expected.float(), atol=tolerance, rtol=tolerance)


def test_kernel_is_off_with_reverie_native_0(monkeypatch):
    monkeypatch.setenv("REVERIE_NATIVE", "0")
    assert native.kernel() is None


def test_kernel_refuses_a_layout_that_does_not_match_its_row(kernel):
    """A layout that points past the row raises instead of reading outside the tensors."""
    layout = attention.Packed({}, torch.tensor([0, 1]), torch.tensor([2, 4]), 6, lead=2)
    T = len(layout.entry)
    q, k, v = (torch.randn(1, 2, T, 8) for _ in range(3))
    kp = torch.randn(2, 2, 6, 8)
    args = (kp, kp, layout.entry, layout.position, layout.entry_start, layout.entry_pos, layout.parent, 0.3, None, None)
    assert native.packed_attention(q, k, v, *args).shape == (1, T, 2, 8)
    with pytest.raises(ValueError):
        native.packed_attention(q[:, :, :-3], k[:, :, :-3], v[:, :, :-3], *args)  # fewer tokens than the layout
    start = layout.entry_start.clone()
    start[-1] += 5
    with pytest.raises(ValueError):
        native.packed_attention(q, k, v, *args[:4], start, *args[5:])


def test_the_kernel_is_loaded_only_from_a_folder_only_this_user_can_change(kernel, tmp_path, monkeypatch):
    """A cache folder others can write to is not trusted: the kernel is built into a private folder instead;
    a library in the private cache that others could have replaced is built again."""
    monkeypatch.setenv("REVERIE_CACHE", str(tmp_path))
    library = native.build()
    assert library.parent == tmp_path / "native" and native.private(library.parent) and native.private(library)
    library.chmod(0o666)  # a file anyone could have replaced
    library.write_bytes(b"planted")
    rebuilt = native.build()
    assert rebuilt == library and native.private(rebuilt) and rebuilt.read_bytes() != b"planted"
    (tmp_path / "native").chmod(0o777)  # a folder anyone can write to
    elsewhere = native.build()
    assert elsewhere.parent != tmp_path / "native" and native.private(elsewhere.parent)
