"""Building blocks of the MaxQuery MONAI Label app: tasks, datastore, model store and settings."""
