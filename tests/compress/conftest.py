"""Fixtures for the compression tests."""
import pytest

_CALIBRATION = [
    "The film is a quiet triumph of acting and mood.", "A tedious, overlong mess with no point at all.",
    "Stocks rallied after the central bank held rates.", "How do I reset the password on my router?",
    "The river flooded the lower town in the spring.", "She played the cello with startling tenderness.",
    "An unfunny comedy that mistakes noise for wit.", "The committee will publish its findings on Monday.",
    "Bright, brisk and surprisingly moving.", "The recipe calls for two cups of flour and an egg.",
    "Nobody in the audience laughed once.", "Engineers traced the outage to a faulty switch.",
    "What time does the museum open on Sundays?", "A gorgeous score lifts an otherwise thin story.",
    "The bridge was closed for repairs until June.", "I have never been so bored in a cinema.",
]


@pytest.fixture
def calibration():
    """Sixteen varied real-looking sentences for calibrated methods (GPTQ, SmoothQuant, mixed)."""
    return list(_CALIBRATION)
