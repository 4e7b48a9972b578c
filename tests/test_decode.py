"""Streaming / chunked decoding agrees with whole decoding."""
from __future__ import annotations

import pytest
import torch

from eqcli_core.decode import StreamingDecoder, decode_chunked, seam_error, to_uint8
from eqcli_core.errors import UsageError
from eqcli_core.tokenizer import TokenizerConfig, build_tokenizer


def _fast_tok():
    torch.manual_seed(0)
    cfg = TokenizerConfig(arch="fast", height=32, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), len_down_scale=1,
                          z_channels=8, token_dim=8, stem=2, kernel=3, mlp_ratio=2, tail_ch=8)
    return build_tokenizer(cfg).eval()


def _ldm_tok():  # global attention in the decoder's mid block: decode_context is None
    torch.manual_seed(0)
    cfg = TokenizerConfig(arch="ldm", height=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), len_down_scale=1,
                          z_channels=4, token_dim=8)
    return build_tokenizer(cfg).eval()


@pytest.fixture(scope="module")
def fast_tok():
    return _fast_tok()


@pytest.mark.parametrize("n", [1, 2, 7, 33, 70])
@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_chunked_equals_whole(fast_tok, n, chunk):
    assert fast_tok.decode_context is not None
    z = torch.randn(2, n, fast_tok.token_dim, generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        whole = fast_tok.decode(z)
    part = decode_chunked(fast_tok, z, chunk=chunk)
    assert part.shape == (2, 3, fast_tok.height, n * fast_tok.column_width)
    assert (part - whole).abs().max().item() < 1e-5


def test_too_little_overlap_is_not_exact(fast_tok):
    # the equality above is not vacuous: with less context than decode_context, seams appear
    z = torch.randn(1, 40, fast_tok.token_dim, generator=torch.Generator().manual_seed(1))
    err = seam_error(fast_tok, z, chunk=4, overlap=0)
    assert err["max_abs"] > 1e-3
    assert seam_error(fast_tok, z, chunk=4)["max_abs"] < 1e-5


def test_streaming_column_by_column(fast_tok):
    z = torch.randn(1, 45, fast_tok.token_dim, generator=torch.Generator().manual_seed(2))
    dec = StreamingDecoder(fast_tok, chunk=5)
    pieces, emitted = [], []
    for i in range(z.shape[1]):
        out = dec.feed(z[:, i])  # (B, C) one column at a time
        if out is not None:
            pieces.append(out)
        emitted.append(dec.emitted_columns)
        # output lags by at most chunk + overlap columns: bounded latency and buffer
        assert (i + 1) - dec.emitted_columns < dec.chunk + dec.overlap
        assert dec._buf.shape[1] <= dec.chunk + 2 * dec.overlap
    pieces.append(dec.flush())
    with torch.no_grad():
        whole = fast_tok.decode(z)
    assert (torch.cat(pieces, -1) - whole).abs().max().item() < 1e-5
    assert emitted[-1] < z.shape[1]  # something was left for flush


def test_global_attention_decoder_seams_shrink_with_overlap():
    tok = _ldm_tok()
    assert tok.decode_context is None
    z = torch.randn(1, 48, tok.token_dim, generator=torch.Generator().manual_seed(3))
    e1 = seam_error(tok, z, chunk=8, overlap=1)["mean_abs"]
    e8 = seam_error(tok, z, chunk=8, overlap=8)["mean_abs"]
    full = seam_error(tok, z, chunk=8, overlap=48)["max_abs"]  # every window sees everything
    assert full < 1e-5
    assert e8 < e1
    cf = decode_chunked(tok, z, chunk=8, overlap=4, crossfade=2)
    assert cf.shape == (1, 3, tok.height, 48 * tok.column_width)


def test_crossfade_is_exact_for_local_decoders(fast_tok):
    # blending two windows that agree exactly changes nothing
    z = torch.randn(1, 30, fast_tok.token_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = fast_tok.decode(z)
    cf = decode_chunked(fast_tok, z, chunk=6, crossfade=2)
    assert (cf - whole).abs().max().item() < 1e-5


def test_bad_settings_and_uint8(fast_tok):
    with pytest.raises(UsageError):
        StreamingDecoder(fast_tok, chunk=0)
    with pytest.raises(UsageError):
        StreamingDecoder(fast_tok, chunk=2, crossfade=3)
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    u = to_uint8(x)
    assert u.shape == (1, 1, 5, 3) and u[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
