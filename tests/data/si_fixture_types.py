"""A class named like the original's record type, so fixture pickles look like the real ones."""


class MusicData:
    def __init__(self, music4all_id, lyrics, comment=None, comments=None):
        self.music4all_id, self.lyrics = music4all_id, lyrics
        if comment is not None:
            self.comment = comment
        if comments is not None:
            self.comments = comments
