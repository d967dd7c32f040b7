"""The one trainer shared by every system."""
