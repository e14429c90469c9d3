"""Text sources: public-domain corpora read from installed packages."""
