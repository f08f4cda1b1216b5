"""Shipped sarcodec weights (installed as the ``sarcodec.bundled_weights`` package); see README.md here."""
