//! RESP2/RESP3 codec: an incremental, bounded request decoder and a reply encoder. No I/O.
