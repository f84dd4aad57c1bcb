"""Output shapes of every generator, the face preset's layer shapes, and rebuilding."""

import pytest
import torch

from abp.models import (
    AudioGenerator,
    ImageGenerator,
    LinearGenerator,
    TextureGenerator,
    VideoGenerator,
    build_generator,
    face_generator,
)


@pytest.mark.parametrize(
    "generator, signal_shape",
    [
        (ImageGenerator(latent_dim=20, image_size=16, channels=1, width=8), (1, 16, 16)),
        (ImageGenerator(latent_dim=20, image_size=32, channels=3, width=8), (3, 32, 32)),
        (ImageGenerator(latent_dim=20, image_size=128, channels=3, width=4), (3, 128, 128)),
        (ImageGenerator(latent_dim=2, image_size=8, channels=1, widths=(16,)), (1, 8, 8)),
        (
            TextureGenerator(latent_channels=3, latent_size=7, channels=3, widths=(16, 8)),
            (3, 56, 56),
        ),
        (
            VideoGenerator(
                latent_channels=4,
                latent_frames=2,
                latent_size=4,
                channels=3,
                widths=(16, 8),
                temporal_layers=2,
            ),
            (3, 8, 32, 32),
        ),
        (
            VideoGenerator(
                latent_channels=4,
                latent_frames=4,
                latent_size=2,
                channels=1,
                widths=(8,),
                temporal_layers=0,
            ),
            (1, 4, 8, 8),
        ),
        (AudioGenerator(latent_channels=4, latent_length=8, widths=(16, 8), stride=4), (1, 512)),
        (LinearGenerator(latent_dim=3, output_shape=(1, 4, 4)), (1, 4, 4)),
    ],
)
def test_generator_maps_a_latent_batch_to_a_signal_batch(generator, signal_shape):
    z = generator.sample_latent(3)
    assert z.shape == (3, *generator.latent_shape)
    x = generator(z)
    assert x.shape == (3, *signal_shape)
    if not isinstance(generator, LinearGenerator):
        assert x.abs().max() <= 1  # tanh output, the range of prepared data


def test_face_preset_has_the_papers_layer_shapes():
    g = face_generator(channels=3)
    assert g.latent_shape == (100,)
    shapes = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
        for m in g.upsample
        if isinstance(m, torch.nn.ConvTranspose2d)
    ]
    g(torch.zeros(2, 100))
    for h in hooks:
        h.remove()
    assert (g.widths[0], g.base, g.base) == (512, 4, 4)
    assert shapes == [(256, 8, 8), (128, 16, 16), (64, 32, 32), (3, 64, 64)]


def test_texture_generator_grows_with_its_latent_map():
    g = TextureGenerator(latent_channels=2, latent_size=7, channels=1, widths=(8, 4))
    small = g.sample(1)
    large = g.sample(1, latent_shape=(2, 14, 21))
    assert small.shape == (1, 1, 56, 56)
    assert large.shape == (1, 1, 112, 168)


def test_build_generator_rebuilds_the_same_network_from_its_config():
    original = VideoGenerator(
        latent_channels=2,
        latent_frames=1,
        latent_size=2,
        channels=1,
        widths=(4,),
        temporal_layers=1,
    )
    copy = build_generator(original.config)
    copy.load_state_dict(original.state_dict())
    z = original.sample_latent(2)
    torch.testing.assert_close(copy(z), original(z))


def test_bad_generator_settings_are_explained():
    with pytest.raises(ValueError, match="image_size=48"):
        ImageGenerator(latent_dim=4, image_size=48, widths=(8, 8, 8, 8, 8))
    with pytest.raises(ValueError, match="unknown generator kind 'gan'"):
        build_generator({"kind": "gan"})
    with pytest.raises(ValueError, match="stride=3"):
        AudioGenerator(stride=3)


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: ImageGenerator(latent_dim=4, image_size=16, widths=[]),
            "widths must list at least one channel count",
        ),
        (
            lambda: ImageGenerator(latent_dim=4, image_size=16, widths=(8, 0)),
            r"widths\[1\] must be ≥ 1, got 0",
        ),
        (
            lambda: ImageGenerator(latent_dim=4, image_size=16, widths=8),
            "widths must be a list of channel counts, got 8",
        ),
        (
            lambda: ImageGenerator(latent_dim=4, image_size=16, widths=(8, 4.5)),
            r"widths\[1\] must be a whole number ≥ 1, got 4.5",
        ),
        (lambda: ImageGenerator(latent_dim=0, image_size=16), "latent_dim must be ≥ 1, got 0"),
        (
            lambda: ImageGenerator(latent_dim=True, image_size=16),
            "latent_dim must be a whole number ≥ 1, got True",
        ),
        (
            lambda: ImageGenerator(latent_dim=4, image_size=16, channels=0),
            "channels must be ≥ 1, got 0",
        ),
        (lambda: ImageGenerator(latent_dim=4, image_size=16, width=0), "width must be ≥ 1, got 0"),
        (lambda: TextureGenerator(latent_channels=0), "latent_channels must be ≥ 1, got 0"),
        (lambda: TextureGenerator(latent_size=-1), "latent_size must be ≥ 1, got -1"),
        (lambda: VideoGenerator(latent_frames=0), "latent_frames must be ≥ 1, got 0"),
        (
            lambda: VideoGenerator(temporal_layers=True),
            "temporal_layers=True must be a whole number",
        ),
        (lambda: AudioGenerator(latent_length=0), "latent_length must be ≥ 1, got 0"),
        (lambda: AudioGenerator(stride=float("inf")), "stride=inf must be an even number"),
        (lambda: LinearGenerator(latent_dim=-2, output_shape=4), "latent_dim must be ≥ 1, got -2"),
        (
            lambda: LinearGenerator(latent_dim=2, output_shape=[1, 0]),
            r"output_shape\[1\] must be ≥ 1",
        ),
        (lambda: LinearGenerator(latent_dim=2, output_shape=[]), "output_shape must be a size"),
    ],
)
def test_sizes_must_be_whole_numbers_of_at_least_one(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_widths_may_be_empty_where_the_latent_map_feeds_the_last_layer():
    # Texture, video and audio generators have len(widths) + 1 layers: no widths is one layer.
    texture = TextureGenerator(latent_channels=2, latent_size=3, channels=1, widths=[])
    assert texture.sample(1).shape == (1, 1, 6, 6)
    audio = AudioGenerator(latent_channels=2, latent_length=4, widths=[], stride=2)
    assert audio.sample(1).shape == (1, 1, 8)


def test_a_generator_is_sized_for_its_data_seeded_and_saved_and_loaded_whole(tmp_path):
    from abp.models import generator_for, load_generator, save_generator, sized_config

    assert sized_config({"kind": "image", "latent_dim": 4}, [3, 16, 16]) == {
        "kind": "image",
        "latent_dim": 4,
        "channels": 3,
        "image_size": 16,
    }
    assert sized_config({"kind": "linear", "latent_dim": 2}, [1, 8])["output_shape"] == [1, 8]
    config = {"kind": "image", "latent_dim": 4, "widths": [8]}
    first, again = (generator_for(config, [1, 16, 16], seed=3) for _ in range(2))
    for a, b in zip(first.parameters(), again.parameters()):  # the seed fixes the weights
        assert torch.equal(a, b)
    with pytest.raises(
        ValueError,
        match=r"makes signals of shape \[1, 8, 8\], but faces holds "
        r"\[1, 16, 16\]; change its sizes",
    ):
        generator_for({**config, "image_size": 8}, [1, 16, 16], data_name="faces")
    loaded = load_generator(save_generator(first, tmp_path / "generator.pt"))
    z = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(loaded(z), first(z))
