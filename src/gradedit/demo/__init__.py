"""The demos behind ``gradedit demo``: ``pronouns`` (GRADIEND he/she, the main job) and ``german``."""
