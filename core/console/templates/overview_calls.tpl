% if ov is None:
<p class="empty">Call figures come with the query layer.</p>
% end
