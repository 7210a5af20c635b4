"""NearCAIPI: explainable, interactive visual inspection of parts (OK / NOK) with InvRISE explanations."""

__version__ = "0.1.0"
