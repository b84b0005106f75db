"""Device mesh and partition rules shared by every training job."""
