"""Build tiny random-weight InstructPix2Pix and open_clip models that load through the real loaders.

Run `python -m tests.tiny_models OUT_DIR` from the repository root to write OUT_DIR/ip2p (a diffusers
StableDiffusionInstructPix2PixPipeline directory) and OUT_DIR/clip (an open_clip `local-dir:` directory). Both are
built offline from fixed seeds, so every build has the same weights.
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

# Byte-level BPE of OpenAI CLIP: 256 byte symbols, 256 end-of-word symbols, 48894 merges and 2 special tokens.
CLIP_VOCAB_SIZE = 49408
CLIP_MERGE_COUNT = CLIP_VOCAB_SIZE - 256 - 256 - 2
CLIP_CONTEXT_LENGTH = 77
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"

TINY_CLIP_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": CLIP_CONTEXT_LENGTH, "vocab_size": CLIP_VOCAB_SIZE, "width": 32, "heads": 4,
                 "layers": 2},
}
# Mean and standard deviation of OpenAI CLIP's training images, as open_clip.constants defines them.
TINY_CLIP_PREPROCESS_CFG: dict[str, Any] = {
    "size": 32,
    "mode": "RGB",
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def bytes_to_unicode() -> dict[int, str]:
    """Map each byte to a printable character, as OpenAI's CLIP tokenizer and GPT-2 do."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in characters)))


def read_open_clip_merges() -> list[tuple[str, str]]:
    """Read the BPE merges from the vocabulary file that the open_clip package ships."""
    import open_clip

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    # The first line is a version header. open_clip's SimpleTokenizer uses the same slice of merges.
    merge_lines = lines[1 : CLIP_MERGE_COUNT + 1]
    return [tuple(line.split()) for line in merge_lines]  # type: ignore[misc]


def write_clip_tokenizer_files(path: Path) -> Path:
    """Write vocab.json and merges.txt of the OpenAI CLIP tokenizer, rebuilt from open_clip's BPE file."""
    merges = read_open_clip_merges()
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [symbol + "</w>" for symbol in symbols]
    vocab += ["".join(merge) for merge in merges]
    vocab += [START_OF_TEXT, END_OF_TEXT]
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"rebuilt CLIP vocabulary has {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}")

    path.mkdir(parents=True, exist_ok=True)
    vocab_ids = {token: index for index, token in enumerate(vocab)}
    (path / "vocab.json").write_text(json.dumps(vocab_ids, ensure_ascii=False), encoding="utf-8")
    merge_text = "#version: 0.2\n" + "\n".join(" ".join(merge) for merge in merges) + "\n"
    (path / "merges.txt").write_text(merge_text, encoding="utf-8")
    return path


def build_clip_tokenizer() -> Any:
    """Build a transformers CLIPTokenizer equal to openai/clip-vit-base-patch32's, without network access."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="clip-tokenizer-") as work_dir:
        files = write_clip_tokenizer_files(Path(work_dir))
        return CLIPTokenizer.from_pretrained(
            str(files),
            bos_token=START_OF_TEXT,
            eos_token=END_OF_TEXT,
            unk_token=END_OF_TEXT,
            pad_token=END_OF_TEXT,
            model_max_length=CLIP_CONTEXT_LENGTH,
        )


def build_tiny_ip2p(path: str | Path) -> Path:
    """Save a tiny random StableDiffusionInstructPix2PixPipeline to `path` and return the path."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    torch.manual_seed(0)
    # in_channels 8: the noisy latents and the encoded input image are concatenated along the channels.
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=8,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    # The settings of the scheduler that timbrooks/instruct-pix2pix ships.
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    )

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
    )

    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=CLIP_VOCAB_SIZE,
            max_position_embeddings=CLIP_CONTEXT_LENGTH,
            bos_token_id=CLIP_VOCAB_SIZE - 2,
            eos_token_id=CLIP_VOCAB_SIZE - 1,
            pad_token_id=1,
        )
    )
    tokenizer = build_clip_tokenizer()

    pipeline = StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(path)
    # transformers 5 saves only tokenizer.json, so the two BPE files are added for the slow tokenizer of transformers 4.
    write_clip_tokenizer_files(path / "tokenizer")
    return path


def build_tiny_clip(path: str | Path) -> Path:
    """Save a tiny random open_clip model as a `local-dir:` directory at `path` and return the path."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP_MODEL_CFG)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(path / "open_clip_model.safetensors"))

    config = {"model_cfg": TINY_CLIP_MODEL_CFG, "preprocess_cfg": TINY_CLIP_PREPROCESS_CFG}
    (path / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def build_tiny_models(out_dir: str | Path) -> dict[str, Path]:
    """Build both tiny models under `out_dir` and return their directories by name ("ip2p", "clip")."""
    out_dir = Path(out_dir)
    return {
        "ip2p": build_tiny_ip2p(out_dir / "ip2p"),
        "clip": build_tiny_clip(out_dir / "clip"),
    }


def main(argv: list[str]) -> int:
    """Build the tiny models into the directory named by the first argument and print their paths."""
    if len(argv) != 1:
        print("usage: python -m tests.tiny_models OUT_DIR", file=sys.stderr)
        return 2
    for model_dir in build_tiny_models(argv[0]).values():
        print(model_dir.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
